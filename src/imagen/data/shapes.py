"""The synthetic "shapes world": an offline stand-in for LAION (training) and DrawBench (evaluation).

Imagen judges its ablations (§4.4) on DrawBench (§3) with human raters; here every sample is a small image
of 1-4 flat-coloured shapes on a uniform light-grey background with a caption from one of four DrawBench-style
categories (:mod:`imagen.data.captions`) and machine-checkable ground truth (:mod:`imagen.data.constraints`),
so alignment is scored automatically (:mod:`imagen.eval.judge`). This module holds the world: its
configuration, the seeded generator (template, objects, placement) and the renderer.

Ground truth (``meta``) is a JSON-able dict::

    {"category": "positional", "resolution": 32, "n_objects": 2, "coords": "normalized",
     "objects": [{"shape": "square", "color": "green", "size": 0.31, "cx": 0.24, "cy": 0.55}, ...],
     "constraints": [{"type": "binding", "color": "green", "shape": "square"},
                     {"type": "binding", "color": "purple", "shape": "circle"},
                     {"type": "relation", "subject": {"color": "green", "shape": "square"},
                      "relation": "left_of", "object": {"color": "purple", "shape": "circle"}}]}

Coordinates are normalised to [0, 1] (x to the right, y downwards); ``size`` is the side of the
object's bounding box as a fraction of the image side.

Determinism: sample ``i`` is drawn from ``numpy.random.default_rng([seed, split_id, i])`` only, so it
does not depend on sample ``i - 1`` and shards can be generated in any order or in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .captions import CATEGORIES, TEMPLATES, normalize_caption, parse_caption
from .constraints import Relation, parse_constraints, relation_holds
from .vocab import INVERSE, MAX_OBJECTS, PALETTE, RELATIONS, SHAPES, Obj

__all__ = [
    "BACKGROUND",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "GENERATOR_VERSION",
    "ShapesSample",
    "ShapesWorld",
]

# Bump when the generator's output changes, so shard caches keyed on the fingerprint are rebuilt.
GENERATOR_VERSION = 1

BACKGROUND: tuple[int, int, int] = (205, 205, 205)

DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DEFAULT_CATEGORY_WEIGHTS: dict[str, float] = {
    "counting": 0.4,
    "colors": 0.3,
    "positional": 0.2,
    "descriptions": 0.1,
}
# Weights for n = 1..4 in the counting category (1-2 objects dominate: easy for a tiny model).
DEFAULT_COUNT_WEIGHTS: tuple[float, ...] = (0.45, 0.3, 0.15, 0.1)

# Object size range (fraction of the image side) by number of objects in the image.
_SIZE_RANGE: dict[int, tuple[float, float]] = {1: (0.4, 0.6), 2: (0.28, 0.4), 3: (0.22, 0.32), 4: (0.2, 0.28)}
_EDGE_MARGIN = 0.02  # objects stay this far inside the image
_GAP = 0.04  # minimum gap between object bounding boxes (on at least one axis)
_MAX_OFF_AXIS = 0.5  # generated relations: |off-axis offset| <= this * primary offset
_PLACE_TRIES = 400
_SAMPLE_TRIES = 200


def _plain(value: Any) -> Any:
    """Convert OmegaConf containers (as passed by Hydra) to plain Python lists/dicts."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a Hydra dependency
        pass
    return value


def _parse_obj(text: str, colors: Sequence[str], shapes: Sequence[str], what: str) -> Obj:
    """Parse a "color shape" string such as "red triangle"."""
    parts = str(text).split()
    if len(parts) != 2:
        raise ValueError(f"{what}: expected 'color shape' (e.g. 'red triangle'), got {text!r}")
    color, shape = parts[0].lower(), parts[1].lower()
    if color not in colors:
        raise ValueError(f"{what}: unknown colour {color!r} in {text!r}; valid colours: {', '.join(colors)}")
    if shape not in shapes:
        raise ValueError(f"{what}: unknown shape {shape!r} in {text!r}; valid shapes: {', '.join(shapes)}")
    return color, shape


# ----------------------------------------------------------------------------------------- world


@dataclass
class ShapesSample:
    """One generated sample: ``image`` (PIL RGB, None when not rendered), ``caption``, ``meta``."""

    image: Image.Image | None
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


def _canonical_relation(subj: Obj, relation: str, obj: Obj) -> tuple[Obj, str, Obj]:
    """Express right_of/below as left_of/above so a triple and its inverse compare equal."""
    if relation in ("right_of", "below"):
        return obj, INVERSE[relation], subj
    return subj, relation, obj


class ShapesWorld:
    """Configuration + seeded generator of the shapes world (Hydra-instantiable: plain kwargs).

    Args:
        resolution: image side in pixels (>= 16; 32 and 64 are used).
        categories: list of category names (equal weights) or a mapping name -> weight.
            Default: counting 0.4, colors 0.3, positional 0.2, descriptions 0.1.
        colors: colour names (subset of :data:`~imagen.data.vocab.PALETTE`); default red, green, blue, yellow,
            purple, orange.
        shapes: shape names (subset of :data:`~imagen.data.vocab.SHAPES`); default circle, square, triangle.
        count_weights: weights for n = 1, 2, ... objects in ``counting`` (at most 4 entries).
        holdout_pairs: "color shape" strings never appearing in any training image or caption.
        holdout_relations: ``[subject, relation, object]`` triples, e.g. ``["red circle", "left_of",
            "blue square"]``, never stated by a training caption nor true in a training image (the inverse
            statement "blue square right_of red circle" is excluded too).
        holdout_captions: exact caption strings (compared after :func:`normalize_caption`) never produced.
        n_eval: size of the fixed held-out evaluation prompt set (see :meth:`eval_prompts`); all held-out
            captions/pairs/relations are always included, so the set can be larger (or smaller in tiny worlds).
        supersample: render at this multiple of ``resolution`` and downsample with LANCZOS.
    """

    def __init__(
        self,
        resolution: int = 32,
        categories: Sequence[str] | Mapping[str, float] | None = None,
        colors: Sequence[str] | None = None,
        shapes: Sequence[str] | None = None,
        count_weights: Sequence[float] | None = None,
        holdout_pairs: Sequence[str] = (),
        holdout_relations: Sequence[Sequence[str]] = (),
        holdout_captions: Sequence[str] = (),
        n_eval: int = 8,
        supersample: int = 4,
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 16:
            raise ValueError(f"resolution must be an integer >= 16, got {resolution!r}")
        self.resolution = int(resolution)
        if isinstance(supersample, bool) or not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 8:
            raise ValueError(f"supersample must be an integer in [1, 8], got {supersample!r}")
        self.supersample = int(supersample)
        if isinstance(n_eval, bool) or not isinstance(n_eval, (int, np.integer)) or n_eval < 1:
            raise ValueError(f"n_eval must be an integer >= 1, got {n_eval!r}")
        self.n_eval = int(n_eval)

        self.colors = self._names(colors, DEFAULT_COLORS, list(PALETTE), "colors", "colour")
        self.shapes = self._names(shapes, DEFAULT_SHAPES, list(SHAPES), "shapes", "shape")
        self.category_weights = self._categories(categories)
        self.count_weights = self._count_weights(count_weights)

        holdout_pairs = list(_plain(holdout_pairs) or [])
        self.holdout_pairs = [" ".join(_parse_obj(p, self.colors, self.shapes, "holdout_pairs")) for p in holdout_pairs]
        self.holdout_relations = [self._relation_triple(r) for r in list(_plain(holdout_relations) or [])]
        self.holdout_captions = [str(c) for c in list(_plain(holdout_captions) or [])]
        if any(not normalize_caption(c) for c in self.holdout_captions):
            raise ValueError("holdout_captions must not contain empty strings")

        held = {tuple(p.split()) for p in self.holdout_pairs}
        self._allowed: list[Obj] = [(c, s) for c in self.colors for s in self.shapes if (c, s) not in held]
        if not self._allowed:
            raise ValueError(
                f"holdout_pairs removes every colour/shape combination of colors={self.colors} shapes={self.shapes}"
            )
        self._binding_pairs = [(a, b) for a in self._allowed for b in self._allowed if a[0] != b[0] and a[1] != b[1]]
        self._distinct_pairs = [(a, b) for a in self._allowed for b in self._allowed if a != b]
        self._check_feasible()
        self._holdout_rel_set = {
            _canonical_relation(tuple(s.split()), r, tuple(o.split())) for s, r, o in self.holdout_relations
        }
        self._eval = self._build_eval_prompts()
        self._banned_captions = {normalize_caption(c) for c in self.holdout_captions} | {
            normalize_caption(p["caption"]) for p in self._eval
        }

    # ------------------------------------------------------------------------- validation

    @staticmethod
    def _names(value: Any, default: Sequence[str], valid: list[str], key: str, noun: str) -> list[str]:
        names = list(default) if value is None else [str(v).lower() for v in _plain(value)]
        if not names:
            raise ValueError(f"{key} must be a non-empty list; valid {noun}s: {', '.join(valid)}")
        for n in names:
            if n not in valid:
                raise ValueError(f"unknown {noun} {n!r} in {key}; valid {noun}s: {', '.join(valid)}")
        if len(set(names)) != len(names):
            raise ValueError(f"{key} contains duplicates: {names}")
        return names

    @staticmethod
    def _categories(value: Any) -> dict[str, float]:
        value = _plain(value)
        if value is None:
            return dict(DEFAULT_CATEGORY_WEIGHTS)
        if isinstance(value, str):
            value = [value]
        items = list(value.items()) if isinstance(value, Mapping) else [(v, 1.0) for v in value]
        if not items:
            raise ValueError(f"categories must be a non-empty list; valid categories: {', '.join(CATEGORIES)}")
        weights: dict[str, float] = {}
        for name, w in items:
            if name not in CATEGORIES:
                raise ValueError(f"unknown category {name!r}; valid categories: {', '.join(CATEGORIES)}")
            if not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
                raise ValueError(f"category weight for {name!r} must be a finite number >= 0, got {w!r}")
            weights[name] = float(w)
        weights = {k: w for k, w in weights.items() if w > 0}
        if not weights:
            raise ValueError(f"categories must give at least one category a positive weight, got {dict(items)}")
        return weights

    @staticmethod
    def _count_weights(value: Any) -> list[float]:
        w = list(DEFAULT_COUNT_WEIGHTS) if value is None else [float(x) for x in _plain(value)]
        if not 1 <= len(w) <= MAX_OBJECTS or any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(
                f"count_weights must be 1-{MAX_OBJECTS} non-negative weights (n = 1, 2, ...) with a positive sum, got {w}"
            )
        return w

    def _relation_triple(self, triple: Any) -> tuple[str, str, str]:
        if isinstance(triple, str) or len(list(triple)) != 3:
            raise ValueError(f"holdout_relations: expected [subject, relation, object], got {triple!r}")
        subj, rel, obj = list(triple)
        if rel not in RELATIONS:
            raise ValueError(f"holdout_relations: unknown relation {rel!r}; valid relations: {', '.join(RELATIONS)}")
        s = _parse_obj(subj, self.colors, self.shapes, "holdout_relations")
        o = _parse_obj(obj, self.colors, self.shapes, "holdout_relations")
        return " ".join(s), rel, " ".join(o)

    def _check_feasible(self) -> None:
        need = {
            "colors": (bool(self._binding_pairs), "two allowed objects differing in both colour and shape"),
            "positional": (bool(self._distinct_pairs), "two distinct allowed colour/shape combinations"),
            "descriptions": (len(self._allowed) >= 3, "three distinct allowed colour/shape combinations"),
        }
        for cat in self.category_weights:
            ok, what = need.get(cat, (True, ""))
            if not ok:
                raise ValueError(
                    f"category {cat!r} needs {what}; colors={self.colors} shapes={self.shapes} "
                    f"holdout_pairs={self.holdout_pairs}"
                )

    # ----------------------------------------------------------------------------- config

    def to_config(self) -> dict[str, Any]:
        """Plain, JSON-able constructor kwargs (round-trips through ``ShapesWorld(**cfg)``)."""
        return {
            "resolution": self.resolution,
            "categories": dict(self.category_weights),
            "colors": list(self.colors),
            "shapes": list(self.shapes),
            "count_weights": list(self.count_weights),
            "holdout_pairs": list(self.holdout_pairs),
            "holdout_relations": [list(r) for r in self.holdout_relations],
            "holdout_captions": list(self.holdout_captions),
            "n_eval": self.n_eval,
            "supersample": self.supersample,
        }

    @classmethod
    def from_config(cls, cfg: Any) -> ShapesWorld:
        """Build from a ShapesWorld, a mapping or a DictConfig of kwargs (``_target_`` keys ignored)."""
        if isinstance(cfg, ShapesWorld):
            return cfg
        if cfg is None:
            return cls()
        cfg = _plain(cfg)
        if not isinstance(cfg, Mapping):
            raise ValueError(f"world must be a ShapesWorld or a mapping of its kwargs, got {type(cfg).__name__}")
        return cls(**{k: v for k, v in cfg.items() if not str(k).startswith("_")})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"ShapesWorld({args})"

    # ------------------------------------------------------------------------- rendering

    def render(self, objects: Sequence[Mapping[str, Any]]) -> Image.Image:
        """Draw objects (normalised coords) on the grey background -> PIL RGB image (res x res)."""
        big = self.resolution * self.supersample
        img = Image.new("RGB", (big, big), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for o in objects:
            _draw_shape(draw, o["shape"], o["cx"] * big, o["cy"] * big, o["size"] * big, PALETTE[o["color"]])
        if self.supersample > 1:
            img = img.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)
        return img

    # ------------------------------------------------------------------------ generation

    def sample(self, index: int, seed: int = 0, split: str = "train", render: bool = True) -> ShapesSample:
        """Training-distribution sample ``index`` (deterministic in seed, split, index and config).

        Never contains a held-out pair, a held-out relation, a held-out caption or an eval prompt.
        ``split`` ("train" or "val") selects an independent random stream.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if index < 0 or seed < 0:
            raise ValueError(f"index and seed must be >= 0, got index={index} seed={seed}")
        rng = np.random.default_rng([int(seed), 0 if split == "train" else 1, int(index)])
        cats = list(self.category_weights)
        p = np.array([self.category_weights[c] for c in cats])
        category = cats[int(rng.choice(len(cats), p=p / p.sum()))]  # fixed: retries keep the category mix exact
        for _ in range(_SAMPLE_TRIES):
            drawn = self._draw(category, rng)
            if drawn is None or not self._training_ok(*drawn):
                continue
            caption, meta = drawn
            return ShapesSample(self.render(meta["objects"]) if render else None, caption, meta)
        raise RuntimeError(
            f"could not draw a {category!r} training sample in {_SAMPLE_TRIES} tries (index={index}); "
            "holdouts/eval prompts exclude too much of this category"
        )

    def _draw(self, category: str, rng: np.random.Generator) -> tuple[str, dict[str, Any]] | None:
        """One attempt: pick a template and its values, place objects. None if placement failed."""
        if category == "counting":
            w = np.array(self.count_weights)
            n = int(rng.choice(len(w), p=w / w.sum())) + 1
            obj = self._allowed[int(rng.integers(len(self._allowed)))]
            values: dict[str, Any] = {"obj": obj, "n": n}
            objs, relations, same_size = [obj] * n, [], True
        else:
            if category == "colors":
                a, b = self._binding_pairs[int(rng.integers(len(self._binding_pairs)))]
                values, objs = {"A": a, "B": b}, [a, b]
            elif category == "positional":
                a, b = self._distinct_pairs[int(rng.integers(len(self._distinct_pairs)))]
                values, objs = {"A": a, "B": b}, [a, b]
            else:  # descriptions: three distinct combinations
                idx = rng.choice(len(self._allowed), size=3, replace=False)
                objs = [self._allowed[int(i)] for i in idx]
                values = dict(zip("ABC", objs))
            values["r1"] = RELATIONS[int(rng.integers(4))]
            values["r2"] = RELATIONS[int(rng.integers(4))]
            same_size = False
        templates = [
            t for t in TEMPLATES if t.category == category and t.n_range[0] <= values.get("n", 1) <= t.n_range[1]
        ]
        t = templates[int(rng.integers(len(templates)))]
        relations = [("ABC".index(s), values[r], "ABC".index(o)) for s, r, o in t.relations]
        placed = _place(rng, len(objs), relations, same_size)
        if placed is None:
            return None
        objects = [
            {"shape": shape, "color": color, "size": size, "cx": cx, "cy": cy}
            for (color, shape), (cx, cy, size) in zip(objs, placed)
        ]
        meta = {
            "category": category,
            "resolution": self.resolution,
            "coords": "normalized",
            "n_objects": len(objects),
            "objects": objects,
            "constraints": t.constraints(values),
        }
        return t.render(values, rng), meta

    def _training_ok(self, caption: str, meta: Mapping[str, Any]) -> bool:
        """Reject samples touching any held-out caption, eval prompt or held-out relation."""
        if normalize_caption(caption) in self._banned_captions:
            return False
        if not self._holdout_rel_set:
            return True
        for c in parse_constraints(meta["constraints"]):
            if isinstance(c, Relation) and _canonical_relation(c.subject, c.relation, c.obj) in self._holdout_rel_set:
                return False
        objects = meta["objects"]
        for subj, rel, obj in self._holdout_rel_set:  # also never *true* in a training image
            for a in objects:
                for b in objects:
                    if a is not b and (a["color"], a["shape"]) == subj and (b["color"], b["shape"]) == obj:
                        if relation_holds(a, rel, b):
                            return False
        return True

    def uses_holdout(self, meta: Mapping[str, Any]) -> bool:
        """Whether a caption's constraints name a held-out colour/shape pair or state a held-out relation (either
        direction): what a compositional test asks of prompts the training data never showed."""
        held_pairs = {tuple(p.split()) for p in self.holdout_pairs}
        for c in parse_constraints(meta["constraints"]):
            if any(ref in held_pairs for ref in c.refs):
                return True
            if isinstance(c, Relation) and _canonical_relation(c.subject, c.relation, c.obj) in self._holdout_rel_set:
                return True
        return False

    # ------------------------------------------------------------------------ evaluation

    def eval_prompts(self, n: int | None = None) -> list[dict[str, Any]]:
        """The fixed held-out evaluation prompts: ``[{"caption", "category", "constraints"}, ...]``.

        Order: held-out captions, held-out pairs ("a red triangle"), held-out relations, then simple
        prompts -- mostly single objects ("a red circle") with every fourth a two-object ``colors``
        prompt. None of these strings is ever produced by :meth:`sample`. ``n`` takes a prefix.
        """
        if n is None:
            n = len(self._eval)
        if not 0 <= n <= len(self._eval):
            raise ValueError(f"n must be in [0, {len(self._eval)}] (the eval set size, see n_eval), got {n}")
        return [dict(p, constraints=[dict(c) for c in p["constraints"]]) for p in self._eval[:n]]

    def eval_captions(self, n: int | None = None) -> list[str]:
        """Just the captions of :meth:`eval_prompts`."""
        return [p["caption"] for p in self.eval_prompts(n)]

    def _build_eval_prompts(self) -> list[dict[str, Any]]:
        by_cat = {t.category: t for t in reversed(TEMPLATES)}  # first template of each category
        single = next(t for t in TEMPLATES if t.text == "{obj}")
        prompts: list[dict[str, Any]] = []

        def add(caption: str, category: str, constraints: list[dict[str, Any]]) -> None:
            if normalize_caption(caption) not in {normalize_caption(p["caption"]) for p in prompts}:
                prompts.append({"caption": caption, "category": category, "constraints": constraints})

        for c in self.holdout_captions:
            parsed = parse_caption(c) or {"category": "custom", "constraints": []}
            add(c, parsed["category"], parsed["constraints"])
        for pair in self.holdout_pairs:
            v = {"obj": tuple(pair.split()), "n": 1}
            add(single.render(v), "counting", single.constraints(v))
        for subj, rel, obj in self.holdout_relations:
            t = by_cat["positional"]
            v = {"A": tuple(subj.split()), "B": tuple(obj.split()), "r1": rel}
            add(t.render(v), "positional", t.constraints(v))

        order = [c for c in CATEGORIES if c in self.category_weights]
        primary, secondary = order[0], (order[1] if len(order) > 1 else order[0])
        diag = self._diagonal_combos()
        k = 0
        while len(prompts) < self.n_eval and k < 4 * self.n_eval + 64:
            cat = secondary if k % 4 == 3 else primary
            j = k // 4 if k % 4 == 3 else k - (k + 1) // 4
            if cat == "counting":
                v: dict[str, Any] = {"obj": diag[j % len(diag)], "n": 1}
                add(single.render(v), cat, single.constraints(v))
            else:
                pairs = self._binding_pairs if cat == "colors" else self._distinct_pairs
                a = diag[j % len(diag)]
                partners = {q for p, q in pairs if p == a}
                if not partners:  # a has no valid partner: fall back to the j-th valid pair
                    a = pairs[j % len(pairs)][0]
                    partners = {q for p, q in pairs if p == a}
                start = j + len(diag) // 2  # a partner far along the diagonal: varied colours/shapes
                b = next(
                    diag[(start + i) % len(diag)] for i in range(len(diag)) if diag[(start + i) % len(diag)] in partners
                )
                v = {"A": a, "B": b, "r1": RELATIONS[j % 4]}
                if cat == "descriptions":
                    v["C"] = next(x for x in diag if x not in (a, b))
                t = by_cat[cat]
                add(t.render(v), cat, t.constraints(v))
            k += 1
        return prompts

    def _diagonal_combos(self) -> list[Obj]:
        """Allowed combos ordered so consecutive entries vary both colour and shape."""
        nc, ns = len(self.colors), len(self.shapes)
        out: list[Obj] = []
        for d in range(nc * ns):
            combo = (self.colors[d % nc], self.shapes[(d + d // nc) % ns])
            if combo in self._allowed and combo not in out:
                out.append(combo)
        out += [c for c in self._allowed if c not in out]
        return out


# ------------------------------------------------------------------------------------ placement


def _place(
    rng: np.random.Generator, n: int, relations: Sequence[tuple[int, str, int]], same_size: bool
) -> list[tuple[float, float, float]] | None:
    """Rejection-sample non-overlapping boxes (cx, cy, size) satisfying the relations strictly."""
    lo, hi = _SIZE_RANGE[n]
    for attempt in range(_PLACE_TRIES):
        shrink = 0.9 ** (attempt // 100)  # make room if the configuration is hard to satisfy
        if same_size:
            sizes = [float(rng.uniform(lo, hi)) * shrink] * n
        else:
            sizes = [float(x) * shrink for x in rng.uniform(lo, hi, size=n)]
        boxes = []
        for s in sizes:
            s = round(s, 4)
            a, b = s / 2 + _EDGE_MARGIN, 1 - s / 2 - _EDGE_MARGIN
            boxes.append(
                {"cx": round(float(rng.uniform(a, b)), 4), "cy": round(float(rng.uniform(a, b)), 4), "size": s}
            )
        if not all(_separated(boxes[i], boxes[j]) for i in range(n) for j in range(i + 1, n)):
            continue
        if all(_relation_strict(boxes[s], r, boxes[o]) for s, r, o in relations):
            return [(b["cx"], b["cy"], b["size"]) for b in boxes]
    return None


def _relation_strict(s: Mapping[str, float], relation: str, o: Mapping[str, float]) -> bool:
    """Generator rule: boxes separated by a gap on the relation's axis and a dominant primary offset."""
    if not relation_holds(s, relation, o, margin=0.0):
        return False
    horizontal = relation in ("left_of", "right_of")
    primary = abs(o["cx"] - s["cx"]) if horizontal else abs(o["cy"] - s["cy"])
    off = abs(o["cy"] - s["cy"]) if horizontal else abs(o["cx"] - s["cx"])
    return primary >= (s["size"] + o["size"]) / 2 + _GAP and off <= _MAX_OFF_AXIS * primary


def _separated(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    need = (a["size"] + b["size"]) / 2 + _GAP
    return abs(a["cx"] - b["cx"]) >= need or abs(a["cy"] - b["cy"]) >= need


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, rgb: tuple[int, int, int]
) -> None:
    """Draw one filled shape inside the square box of side ``size`` centred at (cx, cy) (pixels)."""
    h = size / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=rgb)
    elif shape == "square":
        q = 0.86 * h  # slightly smaller than the box so its area is close to the circle's
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + 0.9 * h), (cx - h, cy + 0.9 * h)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=rgb)
    elif shape == "star":
        pts = []
        for k in range(10):
            r = h if k % 2 == 0 else 0.45 * h
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + r * float(np.cos(ang)), cy + r * float(np.sin(ang))))
        draw.polygon(pts, fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
