"""Noise-level (timestep) embedding of the base U-Net (Saharia et al. 2022, App. F.1).

Imagen's base model is ADM-style (Dhariwal & Nichol 2021): the diffusion time is embedded with
transformer sinusoids and an MLP, and the result (plus the pooled text vector, §2.5) modulates
every residual block via scale-shift normalisation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sinusoidal features of a (continuous) scalar per sample.

    t: (B,) float; returns (B, dim) = [cos(t * w_i), sin(t * w_i)] with geometric frequencies w_i.
    An odd `dim` is padded with one zero column.
    """
    half = dim // 2
    t = t.to(torch.promote_types(t.dtype, torch.float32))  # at least float32 (float64 stays float64)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    args = t[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Continuous time t in [0, 1] -> (B, embed_dim) conditioning vector (App. F.1, ADM `time_embed`).

    The sinusoid is taken of `scale * t` (default 1000 * t) so that the frequencies match those an
    ADM trained on 1000 discrete steps would see.
    """

    def __init__(self, channels: int, embed_dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: Tensor) -> Tensor:
        # t (B,) -> (B, E)
        features = sinusoidal_embedding(self.scale * t, self.channels)  # (B, channels)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class SinCosPosition2D(nn.Module):
    """A fixed 2-D sine-cosine position embedding added to the U-Net's first feature map (not in Imagen, whose
    U-Net has none: the ViT/DiT form). Half the channels carry the row's sinusoids, half the column's, so the
    attention layers can tell where a pixel is (self-attention alone is blind to position). No parameters; the
    table is a non-persistent buffer, so checkpoints are unchanged.

    forward(h (B, C, H, W)) -> h + table (1, C, H, W), for the (H, W) = (size, size) it was built for.
    """

    def __init__(self, channels: int, size: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"unet.position=sincos needs an even number of channels, got {channels}")
        pos = torch.arange(size, dtype=torch.float32)
        rows = sinusoidal_embedding(pos, channels // 2, max_period)  # (size, C/2): the row index's features
        cols = sinusoidal_embedding(pos, channels // 2, max_period)  # (size, C/2): the column index's
        table = torch.cat(
            [rows.T[:, :, None].expand(-1, size, size), cols.T[:, None, :].expand(-1, size, size)]
        )  # (C, size, size)
        self.register_buffer("table", table[None], persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.table.to(h.dtype)


def no_position(channels: int, size: int) -> nn.Module:
    """`unet.position=none`: the feature map as it is (Imagen's U-Net)."""
    return nn.Identity()


POSITIONS = {"none": no_position, "sincos": SinCosPosition2D}  # unet.position: name -> (channels, size) -> module


def position_embedding(name: str, channels: int, size: int) -> nn.Module:
    """The `unet.position` option's module, or a one-line error listing the options."""
    if name not in POSITIONS:
        raise ValueError(f"unknown unet.position {name!r}; valid: {', '.join(POSITIONS)}")
    return POSITIONS[name](channels, size)
