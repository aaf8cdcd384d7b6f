"""Batched, seeded sampling of many prompts (§2.2 guidance, §2.3 thresholding) for the scripts.

Image k of a call is a function of (seed, k // batch_size, k % batch_size) only: chunk j of the prompt list is
sampled with the generator seeded `seed + j`, so the same seed and batch size give the same images.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm


def generate(module, captions: list[str], guidance: float, sampler, thresholding, seed: int = 0,
             batch_size: int = 64, progress: bool = True, desc: str = "sampling") -> Tensor:
    """Images (len(captions), 3, H, W) in [-1, 1] on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    chunks = range(0, len(captions), batch_size)
    for j, i in enumerate(tqdm(chunks, desc=desc, disable=not progress, leave=False)):
        images = module.sample(captions[i:i + batch_size], guidance_weight=guidance, sampler=sampler,
                               thresholding=thresholding, seed=seed + j)
        out.append(images.float().cpu())
    return torch.cat(out) if out else torch.empty(0)
