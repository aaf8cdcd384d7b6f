"""What does the frozen text encoder say about each object? Linear probes of its per-layer token embeddings.

Imagen reads the text from a frozen encoder (§2.1) through cross-attention: to draw "a red circle to the left of a
blue square", the U-Net's queries must find, in the embedding of "circle", that the circle is red and goes left. For
every positional caption of the shapes world (two objects of different colours and shapes, the world's templates and
phrase variants) these probes take the embedding of each object's shape word, at every layer, and fit a multinomial
logistic regression to one target:

* ``direction``: the object's place relative to the other (left / right / above / below: the stated relation for the
  subject, its inverse for the object);
* ``colour``: the object's own colour;
* ``other_colour``: the other object's colour.

Each target also has a *swap*: the value the caption gives the other object (the inverse direction, the other
object's colour). A token that mixes both objects is read as its swap about as often as right; that is binding's
and placement's failure in the image (`judge/pairs/swapped`, `judge/relations/inverted`). Train and test captions
use disjoint object pairs, so a probe must read the caption, not remember the pair. Beside the probes,
:func:`pair_similarity` measures how alike the two objects' tokens of one caption are, layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from imagen.data.captions import TEMPLATES
from imagen.data.vocab import INVERSE, PALETTE, RELATIONS, SHAPES, Obj
from imagen.eval.learning_curve import wilson_interval

__all__ = [
    "TARGETS",
    "ProbeExample",
    "ProbeTarget",
    "fit_probe",
    "pair_similarity",
    "plot_probes",
    "probe_examples",
    "probe_layers",
    "token_features",
]


@dataclass(frozen=True)
class ProbeExample:
    """One object of one positional caption: where its shape word starts, the other object and its direction."""

    caption: str
    obj: Obj  # the object whose shape word is read
    other: Obj  # the caption's other object (a different colour and shape)
    char: int  # index in `caption` of the first character of the object's shape word
    direction: str  # one of RELATIONS: the object's place relative to the other object
    test: bool  # the caption's object pair is held out of the probes' training set


@dataclass(frozen=True)
class ProbeTarget:
    """What a probe reads from an object's token (`value`), its classes, and the `swap`: the other object's value."""

    classes: tuple[str, ...]
    value: Callable[[ProbeExample], str]
    swap: Callable[[ProbeExample], str]


TARGETS: dict[str, ProbeTarget] = {
    "direction": ProbeTarget(RELATIONS, lambda e: e.direction, lambda e: INVERSE[e.direction]),
    "colour": ProbeTarget(tuple(PALETTE), lambda e: e.obj[0], lambda e: e.other[0]),
    "other_colour": ProbeTarget(tuple(PALETTE), lambda e: e.other[0], lambda e: e.obj[0]),
}


def probe_examples(n_captions: int, seed: int = 0, test_fraction: float = 0.2) -> list[ProbeExample]:
    """Two examples (subject, object) per positional caption, from the world's own templates and phrase variants.

    The two objects differ in colour and in shape (as the judge's bound/swapped pairs). A `test_fraction` of the
    unordered object pairs (drawn by `seed`) is held out: their captions are the test set.
    """
    if n_captions < 1:
        raise ValueError(f"n must be >= 1 positional caption, got {n_captions}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    objs = [(c, s) for c in PALETTE for s in SHAPES]
    unordered = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :] if a[0] != b[0] and a[1] != b[1]]
    n_test = max(1, round(test_fraction * len(unordered)))
    held = {unordered[i] for i in rng.permutation(len(unordered))[:n_test]}
    templates = [t for t in TEMPLATES if t.category == "positional"]
    examples = []
    for _ in range(n_captions):
        pair = unordered[int(rng.integers(len(unordered)))]
        a, b = pair if rng.random() < 0.5 else pair[::-1]
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        template = templates[int(rng.integers(len(templates)))]
        caption = template.render({"A": a, "B": b, "r1": relation}, rng)
        for obj, other, direction in ((a, b, relation), (b, a, INVERSE[relation])):
            char = caption.index(f"{obj[0]} {obj[1]}") + len(obj[0]) + 1  # the pair is distinct: found once
            examples.append(ProbeExample(caption, obj, other, char, direction, pair in held))
    return examples


@torch.no_grad()
def token_features(encoder, examples: list[ProbeExample], batch_size: int = 256) -> Tensor:
    """(n_layers + 1, n_examples, dim): every hidden state of the encoder's model at each example's shape word.

    `encoder` is a :class:`imagen.text.encoder.FrozenTextEncoder`; its tokenizer's character offsets locate the
    token that starts the shape word (its first sub-word when the tokenizer splits it).
    """
    captions = sorted({e.caption for e in examples})
    row = {c: i for i, c in enumerate(captions)}
    features: list[Tensor] = [None] * len(examples)
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        tok = encoder.tokenizer(
            chunk, padding="longest", truncation=True, max_length=encoder.max_length, return_tensors="pt",
            return_offsets_mapping=True,
        )  # fmt: skip
        out = encoder.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], output_hidden_states=True)
        hidden = torch.stack(out.hidden_states).float()  # (n_layers + 1, batch, len, dim)
        for k, e in enumerate(examples):
            i = row[e.caption] - start
            if not 0 <= i < len(chunk):
                continue
            off = tok["offset_mapping"][i]  # (len, 2) character spans; special and padding tokens are (0, 0)
            hits = ((off[:, 0] <= e.char) & (off[:, 1] > e.char)).nonzero()
            if len(hits) == 0:
                raise ValueError(f"no token covers character {e.char} of {e.caption!r} (cut by encoder.max_length?)")
            features[k] = hidden[:, i, int(hits[0])]
    return torch.stack(features, dim=1)


def fit_probe(x: Tensor, y: Tensor, n_classes: int, weight_decay: float = 1e-3, max_iter: int = 200) -> nn.Module:
    """A multinomial logistic regression on standardised features, fitted to convergence with L-BFGS.

    Written here because the probe is ten lines of torch and scikit-learn is not one of the lab's dependencies.
    """
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(linear.weight), nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")
    z = (x - mean) / std

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(z), y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe = nn.Sequential(_Standardise(mean, std), linear)
    return probe.requires_grad_(False)


class _Standardise(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def probe_layers(
    features: Tensor,
    examples: list[ProbeExample],
    target: ProbeTarget,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> list[dict]:
    """Per layer: the probe's train and held-out accuracy on `target` (with the 95 % interval) and how often its
    held-out prediction is the swap (the other object's value)."""
    index = {c: i for i, c in enumerate(target.classes)}
    y = torch.tensor([index[target.value(e)] for e in examples])
    swap = torch.tensor([index[target.swap(e)] for e in examples])
    test = torch.tensor([e.test for e in examples])
    if test.all() or not test.any():
        raise ValueError("the probe needs captions of both training and held-out object pairs: raise n")
    rows = []
    for layer, x in enumerate(features):
        probe = fit_probe(x[~test], y[~test], len(target.classes), weight_decay, max_iter)
        pred = probe(x).argmax(1)
        k, n = int((pred[test] == y[test]).sum()), int(test.sum())
        rows.append(
            {
                "layer": layer,
                "train_accuracy": float((pred[~test] == y[~test]).float().mean()),
                "test_accuracy": k / n,
                "test_interval": wilson_interval(k / n, n),
                "test_swap": float((pred[test] == swap[test]).float().mean()),
                "n_train": int((~test).sum()),
                "n_test": n,
            }
        )
    return rows


def pair_similarity(features: Tensor, examples: list[ProbeExample]) -> list[dict]:
    """Per layer: the mean cosine similarity of the two objects' tokens of the same caption, and of tokens of two
    different captions (the control), after subtracting the layer's mean token (which every token shares).

    Two objects of different colours and shapes start as dissimilar tokens (negative: they differ where the
    mean does not); a layer that mixes the caption into each token pulls the two together. `examples` are in
    probe_examples' order: (subject, object) of each caption in turn.
    """
    if len(examples) < 4 or any(a.caption != b.caption for a, b in zip(examples[0::2], examples[1::2])):
        raise ValueError("pair_similarity needs probe_examples' (subject, object) pairs of at least 2 captions")
    rows = []
    for layer, x in enumerate(features):
        x = x - x.mean(0)
        a, b = x[0::2], x[1::2]  # (n_captions, dim) each
        rows.append(
            {
                "layer": layer,
                "same_caption": float(nn.functional.cosine_similarity(a, b).mean()),
                "different_captions": float(nn.functional.cosine_similarity(a, b.roll(1, 0)).mean()),
            }
        )
    return rows


def plot_probes(results: dict[str, list[dict]], out, title: str = "", similarity: list[dict] | None = None) -> str:
    """One panel per target: held-out accuracy (with its interval) and the swap rate per layer, against chance;
    and, given `similarity` (pair_similarity's rows), a last panel with the two objects' token similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = len(results) + (similarity is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 3.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        layers = [r["layer"] for r in rows]
        acc = [r["test_accuracy"] for r in rows]
        lo = [a - r["test_interval"][0] for a, r in zip(acc, rows)]
        hi = [r["test_interval"][1] - a for a, r in zip(acc, rows)]
        ax.errorbar(layers, acc, yerr=[lo, hi], marker="o", capsize=3, label="right (held-out pairs)")
        ax.plot(layers, [r["test_swap"] for r in rows], marker="x", ls="--", label="the other object's")
        ax.axhline(1 / len(TARGETS[name].classes), color="grey", lw=0.8, ls=":", label="chance")
        ax.set(xlabel="hidden layer (0 = embeddings)", ylim=(0, 1.02), title=name.replace("_", " "))
        ax.set_xticks(layers)
    axes[0][0].set_ylabel("share of object tokens")
    axes[0][0].legend(fontsize=7, loc="center right")
    if similarity is not None:
        ax = axes[0][-1]
        layers = [r["layer"] for r in similarity]
        ax.plot(layers, [r["same_caption"] for r in similarity], marker="o", label="the two objects of a caption")
        ax.plot(layers, [r["different_captions"] for r in similarity], marker="x", ls="--", label="different captions")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="hidden layer (0 = embeddings)", ylabel="mean cosine (centred)", title="token similarity")
        ax.set_xticks(layers)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)
