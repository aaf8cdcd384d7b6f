"""Cascaded sampling (Saharia et al. 2022, §2.4): the base model's samples are super-resolved by each SR stage
in turn (64 -> 256 -> 1024 in the paper), every stage with its own guidance weight, sampler, thresholding and,
for SR stages, noise-augmentation level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

STAGE_SEED_STRIDE = 7919  # stage i samples with seed + i * stride, so stages draw independent noise


@dataclass
class StageSettings:
    """How one stage samples: guidance weight w (§2.2), sampler and thresholding (§2.3; None: the module's own),
    and the noise-augmentation level of its low-resolution input (SR stages, §2.4)."""

    guidance: float
    sampler: Any = None
    thresholding: Any = None
    aug_level: float = 0.0


def check_chain(names: Sequence[str], low_res_sizes: Sequence[int | None], image_sizes: Sequence[int]) -> None:
    """A base model first, then SR stages, each upsampling the previous stage's resolution; else one line."""
    if low_res_sizes[0] is not None:
        raise ValueError(
            f"{names[0]} is a {low_res_sizes[0]}->{image_sizes[0]} super-resolution stage: a cascade "
            "starts with a base model (ckpt='[BASE,SR,...]')"
        )
    for i in range(1, len(names)):
        low, prev = low_res_sizes[i], image_sizes[i - 1]
        if low is None:
            raise ValueError(f"{names[i]} is a base model: only the first checkpoint of a cascade may be one")
        if low != prev:
            raise ValueError(
                f"{names[i]} upsamples {low}px images but {names[i - 1]} makes {prev}px images: "
                "give the stages in order, each one's output the next one's input"
            )


class Cascade:
    """A base model followed by super-resolution stages, each an ImagenModule; checked to chain resolutions."""

    def __init__(self, modules: Sequence, settings: Sequence[StageSettings], names: Sequence[str] | None = None):
        if not modules or len(settings) != len(modules):
            raise ValueError(
                f"a cascade needs one settings entry per stage, got {len(modules)} stages and {len(settings)} settings"
            )
        names = list(names or [f"stage {i}" for i in range(len(modules))])
        check_chain(names, [m.stage.low_res_size for m in modules], [m.image_size for m in modules])
        self.modules, self.settings, self.names = list(modules), list(settings), names

    @property
    def resolutions(self) -> list[int]:
        return [m.image_size for m in self.modules]

    @torch.no_grad()
    def sample(
        self, captions: list[str], seed: int = 0, lowres: Tensor | None = None, start: int = 0, stop: int | None = None
    ) -> list[Tensor]:
        """Images in [-1, 1] at every resolution of stages start..stop-1 ([(B, 3, r, r) per stage], on the CPU).
        With start > 0, `lowres` are the images of stage start - 1 (e.g. base samples shared by a sweep)."""
        out = []
        for i in range(start, len(self.modules) if stop is None else stop):
            module, s = self.modules[i], self.settings[i]
            lowres = module.sample(
                captions,
                guidance_weight=s.guidance,
                sampler=s.sampler,
                thresholding=s.thresholding,
                seed=seed + i * STAGE_SEED_STRIDE,
                lowres=lowres,
                aug_level=s.aug_level,
            )
            out.append(lowres.float().cpu())
        return out


def generate_cascade(
    cascade: Cascade,
    captions: list[str],
    seed: int = 0,
    batch_size: int = 64,
    lowres: Tensor | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
) -> list[Tensor]:
    """Every resolution's images for many captions, in chunks of `batch_size`; chunk j uses seed + j, so image k
    depends on (seed, k // batch_size, k % batch_size) only: the same seed and batch size give the same images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    for j, i in enumerate(tqdm(range(0, len(captions), batch_size), desc="cascade", disable=not progress, leave=False)):
        low = None if lowres is None else lowres[i : i + batch_size]
        chunks.append(cascade.sample(captions[i : i + batch_size], seed + j, low, start, stop))
    return [torch.cat(per_stage) for per_stage in zip(*chunks)]
