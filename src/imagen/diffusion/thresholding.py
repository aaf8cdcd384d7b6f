"""Thresholding of the x0-prediction at each sampling step (Imagen §2.3, App. Fig. A.31).

A thresholder maps x0_hat (B, C, H, W) -> x0_hat of the same shape; images live in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor


class Thresholding:
    """Interface: x0 -> x0."""

    def __call__(self, x0: Tensor) -> Tensor:
        raise NotImplementedError


class NoThresholding(Thresholding):
    """Leave x0 as predicted."""

    def __call__(self, x0: Tensor) -> Tensor:
        return x0


class StaticThresholding(Thresholding):
    """ "Static thresholding: elementwise clipping the x-prediction to [-1, 1]" (§2.3)."""

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-1.0, 1.0)


class DynamicThresholding(Thresholding):
    """Dynamic thresholding (§2.3).

    "At each sampling step we set s to a certain percentile absolute pixel value in x0, and if s > 1, then
    we threshold x0 to the range [-s, s] and then divide by s."  The percentile is per sample; p = 99.5.
    """

    def __init__(self, percentile: float = 99.5):
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"thresholding.percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def __call__(self, x0: Tensor) -> Tensor:
        b = x0.shape[0]
        # s: the p-th percentile of |x0| per sample.                                        # (B,)
        s = torch.quantile(x0.reshape(b, -1).abs().float(), self.percentile / 100.0, dim=1).to(x0.dtype)
        # "if s > 1": s <- max(s, 1), so samples already inside [-1, 1] are only clipped to [-1, 1].
        s = s.clamp(min=1.0).view(b, *([1] * (x0.ndim - 1)))
        # "threshold x0 to the range [-s, s] and then divide by s".
        return torch.maximum(torch.minimum(x0, s), -s) / s
