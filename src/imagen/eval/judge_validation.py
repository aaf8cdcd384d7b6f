"""Validation of the shapes-world judge (:mod:`imagen.eval.judge`) on perturbed ground-truth renders.

The judge stands in for DrawBench's human raters (Imagen §3), so it is itself measured before its scores are used.

Fresh validation-split samples, mildly blurred and noised, must have their own caption accepted and the
captions of other images (false for them per the ground truth) rejected: the figures are in the README and
``docs/judge_validation.json`` (``scripts/validate_judge.py``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from imagen.data.constraints import CONSTRAINT_TYPES, Constraint, parse_constraints
from imagen.data.shapes import ShapesWorld
from imagen.eval.judge import Judge, _mean, caption_holds


def perturb(image: Image.Image, noise_std: float, blur_radius: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (PIL, ``blur_radius`` = sigma in px) then Gaussian pixel noise (std in uint8 units)."""
    if blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    if noise_std > 0:
        arr = arr + rng.normal(0.0, noise_std, arr.shape)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)  # (H, W, 3)


def _hard_negatives(
    constraints: Sequence[Mapping[str, Any] | Constraint], colors: Sequence[str], shapes: Sequence[str]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Minimal edits of a caption's constraints, as ``(kind, constraint dicts)``.

    Per constraint kind (in :data:`~imagen.data.constraints.CONSTRAINT_TYPES` order), the first constraint of
    that kind with a :meth:`~imagen.data.constraints.Constraint.hard_negative` (count +-1, relation inverted)
    is replaced by it; then the first object's colour or shape is changed and the first two objects' colours
    are swapped (attribute binding), in every constraint naming them.
    """
    out = []
    cons = parse_constraints(constraints)
    objs: list[tuple[str, str]] = []
    for c in cons:
        for r in c.refs:
            if r not in objs:
                objs.append(r)

    def remap(mapping: dict[tuple[str, str], tuple[str, str]]) -> list[dict[str, Any]]:
        return [c.remap(mapping).to_dict() for c in cons]

    for kind in CONSTRAINT_TYPES.values():
        for i, c in enumerate(cons):
            neg = c.hard_negative() if isinstance(c, kind) else None
            if neg is not None:
                out.append((c.type, [x.to_dict() for x in (*cons[:i], neg, *cons[i + 1 :])]))
                break
    if objs:
        color, shape = objs[0]
        k = colors.index(color)
        new_color = next(x for x in colors[k + 1 :] + colors[:k] if (x, shape) not in objs)
        out.append(("color", remap({objs[0]: (new_color, shape)})))
        others = [s for s in shapes if s != shape and (color, s) not in objs]
        if others:
            out.append(("shape", remap({objs[0]: (color, others[0])})))
    if len(objs) >= 2 and objs[0][0] != objs[1][0]:
        a, b = objs[0], objs[1]
        out.append(("swap_colors", remap({a: (b[0], a[1]), b: (a[0], b[1])})))
    return out


def _match(dets: Sequence[Mapping[str, Any]], objects: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Greedy nearest-centre matching of detections to ground-truth objects (distance < half the GT size)."""
    pairs = sorted(
        (float(np.hypot(d["cx"] - o["cx"], d["cy"] - o["cy"])), i, j)
        for i, d in enumerate(dets)
        for j, o in enumerate(objects)
    )
    used_d, used_o, out = set(), set(), []
    for dist, i, j in pairs:
        if i in used_d or j in used_o or dist > 0.5 * objects[j]["size"]:
            continue
        used_d.add(i)
        used_o.add(j)
        out.append((i, j))
    return out


def _rate(values: Sequence[bool]) -> dict[str, float]:
    return {"rate": _mean(values), "n": len(values)}


def validate(
    resolution: int = 32,
    n: int = 1000,
    noise_std: float = 8.0,
    blur_radius: float = 0.5,
    seed: int = 1234,
    n_negatives: int = 3,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Measure the judge on ``n`` fresh val-split samples of the default world, blurred and noised.

    * acceptance: the true caption is judged correct;
    * rejection: the constraints of ``n_negatives`` other images' captions (image ``i + 1`` and random
      others) are judged false -- only pairs whose caption is false for image ``i``'s ground-truth objects
      (:func:`caption_holds`, with the judge's ``exact_objects`` rule) count as negatives;
    * hard rejection: minimal edits of the true caption (:func:`_hard_negatives`), same counting rule;
    * detection: detections matched to ground-truth objects (nearest centre), their colour/shape accuracy,
      centre error, missed and spurious objects, and the shape confusions.
    """
    world = ShapesWorld(resolution=resolution)
    judge = judge or Judge(colors=world.colors, shapes=world.shapes)
    rng = np.random.default_rng([seed, resolution, 7])
    samples = [world.sample(i, seed=seed, split="val") for i in range(n)]
    dets = [judge.detect(perturb(s.image, noise_std, blur_radius, rng)) for s in samples]

    accept, reject, hard = defaultdict(list), defaultdict(list), defaultdict(list)
    gt_inconsistent = 0
    failures: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        objs, cons, cat = s.meta["objects"], s.meta["constraints"], s.meta["category"]
        gt_inconsistent += not caption_holds(objs, cons, judge.margin, judge.exact_objects)
        ok = judge.judge(None, cons, cat, detections=dets[i])["correct"]
        accept["all"].append(ok)
        accept[cat].append(ok)
        if not ok and len(failures) < 10:
            failures.append({"index": i, "caption": s.caption, "objects": objs, "detections": dets[i]})
        others = [(i + 1) % n] + [int(j) for j in rng.choice(n, size=max(n_negatives - 1, 0))]
        for j in others:
            if j == i:
                continue
            o = samples[j].meta
            if caption_holds(objs, o["constraints"], judge.margin, judge.exact_objects):
                continue  # the other caption is also true for image i: not a negative
            rejected = not judge.judge(None, o["constraints"], detections=dets[i])["correct"]
            reject["all"].append(rejected)
            reject[o["category"]].append(rejected)
        for kind, neg in _hard_negatives(cons, list(world.colors), list(world.shapes)):
            if caption_holds(objs, neg, judge.margin, judge.exact_objects):
                continue
            rejected = not judge.judge(None, neg, detections=dets[i])["correct"]
            hard["all"].append(rejected)
            hard[kind].append(rejected)

    color_ok, shape_ok, err_px, confusions, missed, spurious = [], [], [], Counter(), 0, 0
    for s, d in zip(samples, dets):
        objs = s.meta["objects"]
        pairs = _match(d, objs)
        missed += len(objs) - len(pairs)
        spurious += len(d) - len(pairs)
        for i, j in pairs:
            color_ok.append(d[i]["color"] == objs[j]["color"])
            shape_ok.append(d[i]["shape"] == objs[j]["shape"])
            err_px.append(float(np.hypot(d[i]["cx"] - objs[j]["cx"], d[i]["cy"] - objs[j]["cy"])) * resolution)
            if not shape_ok[-1]:
                confusions[f"{objs[j]['shape']}->{d[i]['shape']} (size {objs[j]['size']:.2f})"] += 1
    return {
        "resolution": resolution,
        "n": n,
        "noise_std": noise_std,
        "blur_radius": blur_radius,
        "seed": seed,
        "margin": judge.margin,
        "exact_objects": judge.exact_objects,
        "ground_truth_inconsistent": gt_inconsistent,
        "acceptance": {k: _rate(v) for k, v in accept.items()},
        "rejection": {k: _rate(v) for k, v in reject.items()},
        "hard_rejection": {k: _rate(v) for k, v in hard.items()},
        "detection": {
            "gt_objects": sum(len(s.meta["objects"]) for s in samples),
            "matched": len(color_ok),
            "missed": missed,
            "spurious": spurious,
            "color_accuracy": _mean(color_ok),
            "shape_accuracy": _mean(shape_ok),
            "center_error_px_mean": _mean(err_px),
            "center_error_px_max": float(max(err_px)) if err_px else float("nan"),
            "shape_confusions": dict(confusions.most_common(20)),
        },
        "failures": failures,
    }
