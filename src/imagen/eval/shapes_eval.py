"""The shapes-world evaluation: DrawBench's categories (Imagen §3) scored automatically by the judge.

Prompts are the captions of fresh validation-split samples, the same number from each category (an independent
random stream: new layouts; short captions such as "a red circle" also occur in training, as they would on the web);
the reference set for FID/KID is the ground-truth renders of another, larger draw of the same categories
(so the real and generated sets follow the same caption distribution). Alignment = the judge's accuracy
(all of a caption's constraints hold), overall and per category.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from imagen.data.captions import CATEGORIES
from imagen.data.shapes import ShapesSample, ShapesWorld
from imagen.eval.judge import Judge
from imagen.eval.suite import EvalSuite

ALIGNMENTS = ("accuracy", "partial/all")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def prompt_entry(index: int, sample: ShapesSample) -> dict:
    """A val-split sample as an evaluation prompt (its caption, category, constraints, index and objects)."""
    meta = sample.meta
    return {
        "caption": sample.caption,
        "category": meta["category"],
        "constraints": meta["constraints"],
        "index": index,
        "objects": meta["objects"],
    }


class ShapesEval(EvalSuite):
    """Args:
    n_per_category: generated prompts per category (the world's categories with weight > 0).
    n_reference_per_category: ground-truth images per category for FID/KID (a disjoint draw).
    seed: the validation-split seed the prompts are drawn with (training uses the train split).
    world: ShapesWorld kwargs; null = the world the checkpoint was trained on (`bind`).
    judge: Judge kwargs.
    alignment: the pareto curves' x-axis: "accuracy" (every constraint of a caption holds) or "partial/all"
        (the mean fraction that holds: graded, for models that get few captions entirely right).
    """

    name = "shapes"
    alignment_key = "judge/accuracy"

    def __init__(
        self,
        n_per_category: int = 32,
        n_reference_per_category: int = 128,
        seed: int = 1234,
        world: Any = None,
        judge: dict | None = None,
        alignment: str = "accuracy",
    ):
        if n_per_category < 1 or n_reference_per_category < 2:
            raise ValueError(
                f"eval.n_per_category must be >= 1 and eval.n_reference_per_category >= 2, got "
                f"{n_per_category}, {n_reference_per_category}"
            )
        if alignment not in ALIGNMENTS:
            raise ValueError(f"eval.alignment={alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        self.alignment_key = f"judge/{alignment}"
        self.n_per_category, self.n_reference = n_per_category, n_reference_per_category
        self.seed = seed
        self.world_config = _plain(world)
        self.judge_config = _plain(judge) or {}
        self.world: ShapesWorld | None = None
        self.judge: Judge | None = None
        self._prompts: list[dict] | None = None
        self._reference: list[dict] | None = None

    def bind(self, train_config: DictConfig, image_size: int) -> ShapesEval:
        """Use the checkpoint's world (unless one was given) at the model's resolution."""
        world = self.world_config
        if world is None:
            data = train_config.get("data", {})
            world = _plain(data.get("world")) if "world" in data else {}
        world = {k: v for k, v in dict(world or {}).items() if not str(k).startswith("_")}
        world["resolution"] = image_size
        self.world = ShapesWorld(**world)
        self.judge = Judge(colors=self.world.colors, shapes=self.world.shapes, **self.judge_config)
        return self

    def _draw(self) -> None:
        """Walk the val split once: the first n_per_category of each category are prompts, the next
        n_reference_per_category its reference images."""
        assert self.world is not None, "call bind() first"
        cats = list(self.world.category_weights)
        want = self.n_per_category + self.n_reference
        found: dict[str, list] = {c: [] for c in cats}
        i = 0
        while any(len(v) < want for v in found.values()):
            s = self.world.sample(i, seed=self.seed, split="val", render=False)
            if len(found[s.meta["category"]]) < want:
                found[s.meta["category"]].append((i, s))
            i += 1
        self._prompts, self._reference = [], []
        for c in cats:
            for k, (idx, s) in enumerate(found[c]):
                (self._prompts if k < self.n_per_category else self._reference).append(prompt_entry(idx, s))

    def prompts(self) -> list[dict]:
        if self._prompts is None:
            self._draw()
        return self._prompts

    def reference(self) -> Tensor:
        if self._reference is None:
            self._draw()
        arr = np.stack([np.asarray(self.world.render(p["objects"])) for p in self._reference])  # (N, H, W, 3)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1

    def reference_prompts(self) -> list[dict]:
        if self._reference is None:
            self._draw()
        return self._reference

    def score(self, images: Tensor, prompts: list[dict]) -> dict[str, float]:
        result = self.judge.score(images, prompts)
        return {f"judge/{k}": v for k, v in result.items()}


class SingleObjectEval(ShapesEval):
    """Single-object prompts only ("a red circle", "one blue square"): colour, shape and a count of exactly one,
    drawn from the checkpoint's world with `counting` as the only category and n = 1 (the default model's
    target: it should get these right before anything compositional)."""

    name = "shapes_single"

    def bind(self, train_config: DictConfig, image_size: int) -> SingleObjectEval:
        super().bind(train_config, image_size)
        config = {**self.world.to_config(), "categories": {"counting": 1.0}, "count_weights": [1.0]}
        self.world = ShapesWorld(**config)
        return self


class HoldoutEval(ShapesEval):
    """Compositional generalisation: per category, `n_per_category` prompts that use a held-out colour/shape pair
    or state a held-out relation (`novel`) and as many that do not (`seen`), scored separately
    (`judge/novel/...`, `judge/seen/...`) and together (`judge/...`). The checkpoint's world must hold something
    out (`data.world.holdout_pairs` / `holdout_relations`); prompts are drawn from the same world without the
    holdouts, on the val split. Categories whose captions cannot use a holdout (e.g. counting with only
    relations held out) keep their seen prompts only."""

    name = "shapes_holdout"
    max_tries_per_prompt = 400

    def bind(self, train_config: DictConfig, image_size: int) -> HoldoutEval:
        super().bind(train_config, image_size)
        if not (self.world.holdout_pairs or self.world.holdout_relations):
            raise ValueError(
                "eval=shapes_holdout needs a checkpoint trained with a holdout: set data.world.holdout_pairs "
                "and/or data.world.holdout_relations when training (see experiments/composition_holdout_tiny.yaml)"
            )
        config = {**self.world.to_config(), "holdout_pairs": [], "holdout_relations": []}
        self.open_world = ShapesWorld(**config)  # the distribution with the holdouts put back
        return self

    def _draw(self) -> None:
        super()._draw()  # the reference images for FID/KID: the training world's distribution
        want = self.n_per_category
        # counting and colors captions state no relation: only a held-out pair can make them novel
        novel_possible = {c: bool(self.world.holdout_pairs) or c not in ("counting", "colors") for c in CATEGORIES}
        groups: dict[tuple[str, bool], list[dict]] = {
            (c, novel): []
            for c in self.world.category_weights
            for novel in (False, True)
            if novel_possible[c] or not novel
        }
        limit = self.max_tries_per_prompt * want * len(groups)
        i = 0
        while i < limit and any(len(v) < want for v in groups.values()):
            s = self.open_world.sample(i, seed=self.seed, split="val", render=False)
            key = (s.meta["category"], self.world.uses_holdout(s.meta))
            if key in groups and len(groups[key]) < want:
                groups[key].append({**prompt_entry(i, s), "novel": key[1]})
            i += 1
        self._prompts = [p for (_, novel), v in sorted(groups.items(), key=lambda kv: kv[0][1]) for p in v]

    def score(self, images: Tensor, prompts: list[dict]) -> dict[str, float]:
        out = super().score(images, prompts)
        for group, novel in (("seen", False), ("novel", True)):
            idx = [i for i, p in enumerate(prompts) if p.get("novel") == novel]
            if idx:
                part = self.judge.score(images[idx], [prompts[i] for i in idx])
                out.update({f"judge/{group}/{k}": v for k, v in part.items()})
        return out
