"""Classifier-free guidance (Imagen §2.2; Ho & Salimans, 2021).

Training: the text conditioning of each sample is dropped with probability p_uncond (p = 0.1 for all three
Imagen models); a dropped sample gets the null condition, the zeroed embedding with no valid token.
Sampling: eps~ = w eps(z, c) + (1 - w) eps(z), w = 1 disables guidance.
"""

from __future__ import annotations

import torch
from torch import Tensor


def null_condition(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The unconditional input: zeroed embeddings (B, L, D) and an all-False mask (B, L)."""
    return torch.zeros_like(emb), torch.zeros_like(mask)


def drop_condition(emb: Tensor, mask: Tensor, p_uncond: float, generator: torch.Generator | None = None):
    """Replace each sample's condition by the null one with probability p_uncond; returns (emb, mask)."""
    if p_uncond <= 0.0:
        return emb, mask
    keep = torch.rand(emb.shape[0], device=emb.device, generator=generator) >= p_uncond  # (B,)
    return emb * keep[:, None, None].to(emb.dtype), mask & keep[:, None]


def guide(eps_cond: Tensor, eps_uncond: Tensor, w: float) -> Tensor:
    """eps~ = w eps(z, c) + (1 - w) eps(z)  (§2.2)."""
    return eps_uncond + w * (eps_cond - eps_uncond)
