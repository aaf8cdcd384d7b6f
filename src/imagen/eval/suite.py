"""The interface of an evaluation suite (`conf/eval/`): which prompts to sample, which real images FID/KID
compare against, and how well images match their prompts (the x-axis of Imagen's pareto curves, §3).

A prompt is a dict {"caption": str, "category": str, ...}; a suite may add ground truth (the shapes world's
"constraints").
"""

from __future__ import annotations

from torch import Tensor


class EvalSuite:
    """Subclasses set `name` and `alignment_key` (the metric of `score` drawn against FID) and implement
    `prompts`; `reference` returns None when there are no real images (then no FID/KID)."""

    name = "suite"
    alignment_key = "alignment"

    def bind(self, train_config, image_size: int) -> EvalSuite:
        """Adapt to the checkpoint being evaluated (its training config, its resolution)."""
        return self

    def prompts(self) -> list[dict]:
        raise NotImplementedError

    def reference(self) -> Tensor | None:  # (N, 3, H, W) in [-1, 1]
        return None

    def reference_prompts(self) -> list[dict]:
        """The prompts of the reference images, when known (then `score` of the reference is the ceiling)."""
        return []

    def score(self, images: Tensor, prompts: list[dict]) -> dict[str, float]:
        """Alignment metrics of images (N, 3, H, W) in [-1, 1] sampled from `prompts` (same order)."""
        return {}
