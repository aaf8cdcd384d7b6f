"""Does the frozen text encoder say where each object goes? A linear probe of its per-layer token embeddings.

Imagen reads the text from a frozen encoder (§2.1) through cross-attention: to place "a red circle to the left of a
blue square", the U-Net's queries must find, in the embedding of "circle", that the circle goes left. This probe
asks whether that is linearly readable at each layer: for every positional caption of the shapes world it takes the
embedding of each object's shape word and fits a multinomial logistic regression to the object's direction from the
other (left / right / above / below: the stated relation for the subject, its inverse for the object). Train and
test captions use disjoint object pairs, so the probe must read the relation, not remember the pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from imagen.data.captions import TEMPLATES
from imagen.data.vocab import INVERSE, PALETTE, RELATIONS, SHAPES, Obj
from imagen.eval.learning_curve import wilson_interval

__all__ = ["ProbeExample", "fit_probe", "plot_probe", "probe_examples", "probe_layers", "token_features"]


@dataclass(frozen=True)
class ProbeExample:
    """One object of one positional caption: where its shape word starts and its direction from the other object."""

    caption: str
    obj: Obj
    char: int  # index in `caption` of the first character of the object's shape word
    direction: str  # one of RELATIONS: the object's place relative to the other object
    test: bool  # the caption's object pair is held out of the probe's training set


def probe_examples(n_captions: int, seed: int = 0, test_fraction: float = 0.2) -> list[ProbeExample]:
    """Two examples (subject, object) per positional caption, from the world's own templates and phrase variants.

    A `test_fraction` of the unordered object pairs (drawn by `seed`) is held out: their captions are the test set.
    """
    if n_captions < 1:
        raise ValueError(f"n must be >= 1 positional caption, got {n_captions}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    objs = [(c, s) for c in PALETTE for s in SHAPES]
    unordered = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :]]
    n_test = max(1, round(test_fraction * len(unordered)))
    held = {unordered[i] for i in rng.permutation(len(unordered))[:n_test]}
    templates = [t for t in TEMPLATES if t.category == "positional"]
    examples = []
    for _ in range(n_captions):
        a, b = (unordered[int(rng.integers(len(unordered)))])[:: 1 if rng.random() < 0.5 else -1]
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        template = templates[int(rng.integers(len(templates)))]
        caption = template.render({"A": a, "B": b, "r1": relation}, rng)
        test = (a, b) in held or (b, a) in held
        for obj, direction in ((a, relation), (b, INVERSE[relation])):
            char = caption.index(f"{obj[0]} {obj[1]}") + len(obj[0]) + 1  # the pair is distinct: found once
            examples.append(ProbeExample(caption, obj, char, direction, test))
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
    features: Tensor, examples: list[ProbeExample], weight_decay: float = 1e-3, max_iter: int = 200
) -> list[dict]:
    """Per layer: train and test accuracy of the direction probe, the test interval, and how often the test
    prediction is the inverse direction (what a model that ignores word order would get as often as the truth)."""
    y = torch.tensor([RELATIONS.index(e.direction) for e in examples])
    inverse = torch.tensor([RELATIONS.index(INVERSE[r]) for r in RELATIONS])[y]
    test = torch.tensor([e.test for e in examples])
    if test.all() or not test.any():
        raise ValueError("the probe needs captions of both training and held-out object pairs: raise n")
    rows = []
    for layer, x in enumerate(features):
        probe = fit_probe(x[~test], y[~test], len(RELATIONS), weight_decay, max_iter)
        pred = probe(x).argmax(1)
        k, n = int((pred[test] == y[test]).sum()), int(test.sum())
        rows.append(
            {
                "layer": layer,
                "train_accuracy": float((pred[~test] == y[~test]).float().mean()),
                "test_accuracy": k / n,
                "test_interval": wilson_interval(k / n, n),
                "test_inverse": float((pred[test] == inverse[test]).float().mean()),
                "n_train": int((~test).sum()),
                "n_test": n,
            }
        )
    return rows


def plot_probe(rows: list[dict], out, title: str = "") -> str:
    """Test accuracy (with its interval) and the inverse-direction rate per layer; chance is 1/4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    acc = [r["test_accuracy"] for r in rows]
    lo = [a - r["test_interval"][0] for a, r in zip(acc, rows)]
    hi = [r["test_interval"][1] - a for a, r in zip(acc, rows)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(layers, acc, yerr=[lo, hi], marker="o", capsize=3, label="direction right (held-out pairs)")
    ax.plot(layers, [r["test_inverse"] for r in rows], marker="x", ls="--", label="inverse direction")
    ax.axhline(1 / len(RELATIONS), color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlabel="hidden layer (0 = embeddings)", ylabel="share of object tokens", ylim=(0, 1.02), title=title)
    ax.set_xticks(layers)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)
