"""The shapes-world judge (imagen.eval.judge): detection, constraint decisions, batch scoring, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from imagen.data.shapes import BACKGROUND, DEFAULT_COLORS, DEFAULT_SHAPES, ShapesWorld
from imagen.eval.judge import (
    Judge,
    detect_objects,
    expected_object_count,
    label_components,
    pair_binding,
    relation_direction,
)
from imagen.eval.judge_validation import validate


def _obj(color: str, shape: str, cx: float, cy: float, size: float) -> dict:
    return {"color": color, "shape": shape, "cx": cx, "cy": cy, "size": size}


def _tensor(images) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("resolution", [32, 64])
def test_single_objects_every_colour_and_shape(resolution):
    world = ShapesWorld(resolution=resolution)
    rng = np.random.default_rng(resolution)
    for color in DEFAULT_COLORS:
        for shape in DEFAULT_SHAPES:
            size = float(rng.uniform(0.2, 0.5))  # down to the smallest objects of the world (0.2)
            cx, cy = (float(v) for v in rng.uniform(0.3, 0.7, size=2))
            dets = detect_objects(world.render([_obj(color, shape, cx, cy, size)]))
            assert len(dets) == 1, (color, shape, size, dets)
            d = dets[0]
            assert (d["color"], d["shape"]) == (color, shape), (size, d)
            assert abs(d["cx"] - cx) * resolution < 1.5 and abs(d["cy"] - cy) * resolution < 1.5, (shape, d, cx, cy)
            assert abs(d["size"] - size) < 0.05, (shape, d, size)


@pytest.mark.parametrize("shape", DEFAULT_SHAPES)
def test_counts_of_identical_objects(shape):
    world, judge = ShapesWorld(resolution=32), Judge()
    corners = [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
    for n in range(1, 5):
        img = world.render([_obj("green", shape, x, y, 0.26) for x, y in corners[:n]])
        dets = judge.detect(img)
        for m in range(1, 5):
            r = judge.judge(img, [{"type": "count", "color": "green", "shape": shape, "n": m}], detections=dets)
            assert r["correct"] is (m == n), (n, m, dets)


def test_relation_decisions():
    world, judge = ShapesWorld(resolution=32), Judge()
    a, b = {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}
    horizontal = world.render([_obj("red", "circle", 0.25, 0.5, 0.3), _obj("blue", "square", 0.75, 0.55, 0.3)])
    vertical = world.render([_obj("red", "circle", 0.45, 0.25, 0.3), _obj("blue", "square", 0.5, 0.75, 0.3)])
    expect = [
        (horizontal, {"left_of": True, "right_of": False, "above": False, "below": False}),
        (vertical, {"left_of": False, "right_of": False, "above": True, "below": False}),
    ]
    for img, truth in expect:
        for rel, ok in truth.items():
            relation = {"type": "relation", "subject": a, "relation": rel, "object": b}
            cons = [{"type": "binding", **a}, {"type": "binding", **b}, relation]
            r = judge.judge(img, cons, "positional")
            assert r["constraints"][2] is ok and r["correct"] is ok, (rel, r)


def test_extra_object_fails_exact_objects():
    world = ShapesWorld(resolution=32)
    cons = [
        {"type": "binding", "color": "red", "shape": "circle"},
        {"type": "binding", "color": "blue", "shape": "square"},
    ]
    objs = [_obj("red", "circle", 0.25, 0.3, 0.3), _obj("blue", "square", 0.75, 0.3, 0.3)]
    assert expected_object_count(cons) == 2
    assert Judge().judge(world.render(objs), cons)["correct"] is True
    extra = world.render(objs + [_obj("green", "triangle", 0.5, 0.75, 0.25)])
    r = Judge().judge(extra, cons, "colors")
    assert r["constraints"] == [True, True] and r["exact_objects"] is False and r["correct"] is False
    assert Judge(exact_objects=False).judge(extra, cons)["correct"] is True


def test_pair_binding_bound_swapped_and_undefined():
    cons = [
        {"type": "binding", "color": "red", "shape": "circle"},
        {"type": "binding", "color": "blue", "shape": "square"},
    ]
    red_circle, blue_square = {"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}
    red_square, blue_circle = {"color": "red", "shape": "square"}, {"color": "blue", "shape": "circle"}
    assert pair_binding([red_circle, blue_square], cons) == (True, False)
    assert pair_binding([blue_circle, red_square], cons) == (False, True)
    assert pair_binding([red_circle, blue_circle], cons) == (False, False)  # one colour on both shapes
    relation = [
        {
            "type": "relation",
            "subject": {"color": "red", "shape": "circle"},
            "relation": "left_of",
            "object": {"color": "blue", "shape": "square"},
        }
    ]
    assert pair_binding([blue_circle, red_square], relation) == (False, True)
    same_shape = [cons[0], {"type": "binding", "color": "blue", "shape": "circle"}]
    assert pair_binding([red_circle], cons[:1]) is None and pair_binding([red_circle, blue_circle], same_shape) is None


def test_relation_direction_held_inverted_and_missing_objects():
    left = [
        {
            "type": "relation",
            "subject": {"color": "red", "shape": "circle"},
            "relation": "left_of",
            "object": {"color": "blue", "shape": "square"},
        }
    ]

    def at(color, shape, cx, cy):
        return {"color": color, "shape": shape, "cx": cx, "cy": cy}

    assert relation_direction([at("red", "circle", 0.2, 0.5), at("blue", "square", 0.8, 0.5)], left) == [(True, False)]
    assert relation_direction([at("red", "circle", 0.8, 0.5), at("blue", "square", 0.2, 0.5)], left) == [(False, True)]
    # Above it: neither left of nor right of (the vertical offset dominates).
    assert relation_direction([at("red", "circle", 0.45, 0.1), at("blue", "square", 0.5, 0.9)], left) == [
        (False, False)
    ]
    # A missing object (here the blue square drawn red) leaves the relation out: that is binding's failure.
    assert relation_direction([at("red", "circle", 0.2, 0.5), at("red", "square", 0.8, 0.5)], left) == []
    binding = [{"type": "binding", "color": "red", "shape": "circle"}]
    assert relation_direction([at("red", "circle", 0.2, 0.5)], binding) == []


def test_score_true_and_shuffled_prompts():
    world, judge = ShapesWorld(resolution=32), Judge(colors=None, shapes=None, margin=0.05, exact_objects=True)
    samples = [world.sample(i, seed=4321, split="val") for i in range(16)]
    images = _tensor([s.image for s in samples])  # (16, 3, 32, 32)
    prompts = [
        {"caption": s.caption, "category": s.meta["category"], "constraints": s.meta["constraints"]} for s in samples
    ]
    result = judge.score(images, prompts)
    assert result["accuracy"] == 1.0 and result["n/all"] == 16
    cats = {s.meta["category"] for s in samples}
    assert all(result[c] == 1.0 for c in cats) and sum(result[f"n/{c}"] for c in cats) == 16
    assert result["constraint/exact_objects"] == 1.0
    shuffled = judge.score(images, prompts[1:] + prompts[:1])
    assert shuffled["accuracy"] < 0.2
    assert result["partial/all"] == 1.0 and shuffled["accuracy"] <= shuffled["partial/all"] < 1.0
    # two-object captions of distinct colours and shapes (6 of these 16): drawn as named, never swapped
    assert result["n/pairs"] > 0 and result["pairs/bound"] == 1.0 and result["pairs/swapped"] == 0.0
    # every relation of the ground-truth renders is drawn as told, never inverted
    assert result["n/relations"] > 0 and result["relations/held"] == 1.0 and result["relations/inverted"] == 0.0
    # Captions alone are parsed (constraints and category recovered from the template grammar).
    assert judge.score(images[:4], [{"caption": s.caption} for s in samples[:4]])["accuracy"] == 1.0


@pytest.mark.parametrize("resolution", [32, 64])
def test_validation_meets_requirement(resolution):
    r = validate(resolution, n=150, noise_std=8.0, blur_radius=0.5, seed=1234)
    assert r["ground_truth_inconsistent"] == 0
    assert r["acceptance"]["all"]["rate"] >= 0.98
    assert r["rejection"]["all"]["rate"] >= 0.98 and r["rejection"]["all"]["n"] >= 300
    assert r["hard_rejection"]["all"]["rate"] >= 0.98
    assert r["detection"]["shape_accuracy"] >= 0.98 and r["detection"]["color_accuracy"] >= 0.98


@pytest.mark.parametrize("std", [8.0, 20.0])
def test_noise_only_image_has_no_detections(std):
    rng = np.random.default_rng(0)
    noise = np.clip(np.round(np.array(BACKGROUND, np.float32) + rng.normal(0, std, (64, 64, 3))), 0, 255)
    assert detect_objects(noise.astype(np.uint8)) == []
    one_red_circle = [{"type": "count", "color": "red", "shape": "circle", "n": 1}]
    assert Judge().judge(noise.astype(np.uint8), one_red_circle)["correct"] is False


def test_tensor_and_pil_give_the_same_detections():
    world = ShapesWorld(resolution=64)
    for i in range(4):
        img = world.sample(i, seed=99, split="val").image
        dets = detect_objects(img)
        assert dets and detect_objects(_tensor([img])[0]) == dets == detect_objects(np.asarray(img))


def test_label_components_four_connectivity_and_colours():
    index = -np.ones((6, 6), dtype=np.int64)
    index[0:2, 0:2] = 0  # blob A (colour 0)
    index[2, 2] = 0  # touches A only diagonally: separate
    index[4:6, 0:3] = 1  # blob of colour 1
    index[4:6, 3:5] = 0  # adjacent but another colour: separate
    labels, n = label_components(index)
    assert n == 4
    assert len({labels[0, 0], labels[2, 2], labels[4, 0], labels[4, 3]}) == 4 and labels[5, 5] == 0


def test_judge_is_hydra_instantiable():
    cfg = {"_target_": "imagen.eval.judge.Judge", "colors": ["red", "blue"], "shapes": ["circle"], "margin": 0.1}
    judge = instantiate(cfg)
    assert isinstance(judge, Judge) and judge.colors == ("red", "blue")
    img = ShapesWorld(resolution=32).render([_obj("red", "circle", 0.5, 0.5, 0.4)])
    red, blue = ({"type": "binding", "color": c, "shape": "circle"} for c in ("red", "blue"))
    assert judge.judge(img, [red])["correct"] is True and judge.judge(img, [blue])["correct"] is False
    with pytest.raises(ValueError, match="unknown colours"):
        Judge(colors=["pink"])
