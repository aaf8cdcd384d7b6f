"""Efficient U-Net of Imagen's super-resolution models (Saharia et al. 2022, App. B.1, Fig. A.28-A.30).

Against the base U-Net (unet.py) it changes four things, each from App. B.1:
1. Residual blocks per level are given per level (`num_res_blocks` a list), so the low resolutions,
   which are cheap, get more of the parameters (e.g. [2, 4, 8, 8] for the 64->256 model).
2. The U-Net skip connections are scaled by 1/sqrt(2) before they are concatenated in the up path.
3. The order of resampling and convolution is reversed: a down block downsamples *first* and then runs its
   residual blocks at the lower resolution; an up block runs its residual blocks and *then* upsamples.
4. Self-attention only where configured (`attn_resolutions`; its keys/values extended with the text tokens, as
   in the base U-Net), and text cross-attention at the lowest resolution when no self-attention is there
   (the 256->1024 model has no self-attention at all and keeps explicit text cross-attention, App. F.2).
One skip connection per block (not per residual block), as in Fig. A.28-A.29. Same call signature as the base
U-Net; an SR stage passes `lowres_channels=3` (the upsampled low-resolution image, concatenated) and gets an
aug_level embedding (§2.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from imagen.models.attention import CrossAttentionBlock, check_attention_backend
from imagen.models.resblock import Downsample, ResBlock, Upsample, num_groups
from imagen.models.text_conditioning import TextCond, TextConditioning
from imagen.models.unet import ConditionalUNet, UNetStage, output_head, validate_args

SKIP_SCALE = 2**-0.5


class EfficientUNet(ConditionalUNet):
    """Efficient U-Net (App. B.1). `num_res_blocks`: one count per level of `channel_mult` (or one for all);
    `attention`: the attention kernel of its attention blocks (sdpa | xformers | math; None = the module default)."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int | Sequence[int],
        attn_resolutions: Sequence[int],
        text_dim: int,
        cond: Callable[..., TextConditioning],
        head_dim: int = 64,
        dropout: float = 0.0,
        in_channels: int = 3,
        out_channels: int = 3,
        embed_dim: int | None = None,
        lowres_channels: int = 0,
        skip_scale: float = SKIP_SCALE,
        attention: str | None = None,
    ) -> None:
        super().__init__()
        attention = check_attention_backend(attention)  # unet.attention: refused here, before any compute
        channel_mult, attn_resolutions = list(channel_mult), list(attn_resolutions)
        reachable = validate_args(
            image_size,
            channels,
            channel_mult,
            attn_resolutions,
            head_dim,
            dropout,
            lowest_attention="the lowest level's attention or text cross-attention",
        )
        levels = len(channel_mult)
        blocks = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(blocks) != levels or min(blocks) < 1:
            raise ValueError(
                f"num_res_blocks must be one count >= 1 per level of channel_mult {channel_mult}, got {blocks}"
            )
        embed_dim = 4 * channels if embed_dim is None else embed_dim
        groups = num_groups(channels)
        self.image_size, self.skip_scale = image_size, skip_scale
        self.text_cond = cond(text_dim=text_dim, embed_dim=embed_dim, context_dim=embed_dim)
        context_dim = embed_dim if self.text_cond.has_tokens else None
        self.add_inputs(in_channels, lowres_channels, channels, embed_dim)

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, embed_dim, groups, dropout)

        def attention_blocks(level: int, width: int) -> list[nn.Module]:
            if reachable[level] in attn_resolutions:  # self-attention (+ text: the conditioning's layers)
                return self.text_cond.attention_layers(width, head_dim, groups, attention)
            if level == levels - 1 and context_dim is not None:  # text cross-attention at the lowest resolution
                return [CrossAttentionBlock(width, head_dim, groups, context_dim, backend=attention)]
            return []

        ch, skip_channels = channels, []
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            width = channels * mult
            layers: list[nn.Module] = [Downsample(ch)] if level > 0 else []  # downsample first (App. B.1)
            layers += [res(ch, width)] + [res(width, width) for _ in range(blocks[level] - 1)]
            layers += attention_blocks(level, width)
            self.down.append(UNetStage(*layers))
            ch = width
            skip_channels.append(ch)

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            width = channels * channel_mult[level]
            layers = [res(ch + skip_channels.pop(), width)] + [res(width, width) for _ in range(blocks[level] - 1)]
            layers += attention_blocks(level, width)
            if level > 0:
                layers.append(Upsample(width))  # upsample last (App. B.1)
            self.up.append(UNetStage(*layers))
            ch = width

        self.out = output_head(ch, groups, out_channels)

    def body(self, h: Tensor, emb: Tensor, cond: TextCond) -> Tensor:
        skips = []
        for stage in self.down:
            h = stage(h, emb, cond)
            skips.append(h)  # one skip per block, at the block's (lower) resolution
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop() * self.skip_scale], dim=1), emb, cond)
        return h
