"""Noise conditioning augmentation of the super-resolution stages (Saharia et al. 2022, §2.4, App. Fig. A.11).

The low-resolution conditioning image is corrupted with the variance-preserving forward process at an
`aug_level` in [0, 1], and the network is told the level (embedded like the diffusion time). At training the
level is drawn per sample from U(0, 1); at sampling it is given (paper: best FID at 0, best samples at
0.1-0.3). This makes an SR stage robust to the artefacts of the stage below it, whose samples it sees at
inference instead of ground-truth downsamplings.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imagen.diffusion.schedule import LogSNRSchedule


class NoiseAugmentation:
    """Interface: corrupt a batch of low-resolution images (B, 3, h, w) and return (images, aug_level (B,))."""

    def train(self, lowres: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def sample(
        self, lowres: Tensor, aug_level: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def can_sample(self, aug_level: float) -> bool:
        """Whether a stage trained with this augmentation can sample at `aug_level` (an evaluation's aug_level sweep
        skips the levels it cannot)."""
        raise NotImplementedError


class NoAugmentation(NoiseAugmentation):
    """The ablation's "without": the conditioning image is used as is and aug_level is always 0."""

    def can_sample(self, aug_level: float) -> bool:
        return aug_level == 0

    def train(self, lowres: Tensor) -> tuple[Tensor, Tensor]:
        return lowres, lowres.new_zeros(lowres.shape[0])

    def sample(
        self, lowres: Tensor, aug_level: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if aug_level != 0:
            raise ValueError(
                f"aug_level {aug_level} given to a stage trained with noise_aug=none: it only knows "
                "aug_level 0 (train with noise_aug=gaussian to sample at other levels)"
            )
        return lowres, lowres.new_zeros(lowres.shape[0])


class GaussianAugmentation(NoiseAugmentation):
    """z = alpha(a) x + sigma(a) eps with the diffusion's own schedule at time a = aug_level (§2.4).

    Args:
        schedule: the forward process (the stage's diffusion schedule: cosine for 64->256).
        max_train_level: aug_level ~ U(0, max_train_level) at training (paper: 1).
    """

    def __init__(self, schedule: LogSNRSchedule, max_train_level: float = 1.0):
        if not 0.0 < max_train_level <= 1.0:
            raise ValueError(f"noise_aug.max_train_level must be in (0, 1], got {max_train_level}")
        self.schedule, self.max_train_level = schedule, max_train_level

    def can_sample(self, aug_level: float) -> bool:
        return 0.0 <= aug_level <= 1.0

    def _corrupt(self, lowres: Tensor, level: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        return self.schedule.q_sample(lowres, level, eps), level

    def train(self, lowres: Tensor) -> tuple[Tensor, Tensor]:
        level = torch.rand(lowres.shape[0], device=lowres.device) * self.max_train_level  # (B,)
        return self._corrupt(lowres, level, torch.randn_like(lowres))

    def sample(
        self, lowres: Tensor, aug_level: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if not 0.0 <= aug_level <= 1.0:
            raise ValueError(f"aug_level must be in [0, 1], got {aug_level}")
        level = torch.full((lowres.shape[0],), float(aug_level), device=lowres.device)
        eps = torch.randn(lowres.shape, device=lowres.device, generator=generator, dtype=lowres.dtype)
        return self._corrupt(lowres, level, eps)
