"""BigGAN-style residual block with scale-shift norm conditioning, and the U-Net's resamplers (App. F.1).

The residual block follows ADM (Dhariwal & Nichol 2021). Resampling between resolutions uses the
simple ADM layers -- a stride-2 3x3 conv down, nearest-neighbour x2 + 3x3 conv up -- rather than
BigGAN down/up residual blocks: with those the 512-channel base model overshoots the paper's 2B parameters,
while with the conv resamplers it stays close to it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def num_groups(channels: int) -> int:
    """GroupNorm groups for a base width: 32, but at least 4 channels per group for narrow nets.

    channels 32 -> 8, 64 -> 16, >=128 -> 32. The U-Net uses one value for all its norms (every
    width is a multiple of the base width) and checks that it divides `channels`.
    """
    return max(1, min(32, channels // 4))


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv; GroupNorm * (1 + scale) + shift -> SiLU -> dropout -> conv.

    (scale, shift) = Linear(SiLU(emb)) where emb is the time + pooled-text embedding (§2.5, App. F.1).
    The last conv is zero-initialised so the block starts as its (possibly 1x1-projected) skip path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        groups: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * out_channels))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # x (B, C_in, H, W); emb (B, E) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)  # each (B, C_out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h
