"""The base 64x64 text-conditional U-Net of Imagen (Saharia et al. 2022, §2.5, App. F.1).

ADM-style (Dhariwal & Nichol 2021): a stack of BigGAN residual blocks per resolution, conv
resamplers between resolutions (stride-2 conv down, nearest + conv up; see resblock.py), self-attention
at `attn_resolutions` whose keys/values are extended with the text tokens, and a timestep embedding
to which the pooled text vector is added (§2.5). The text pathway itself lives in
text_conditioning.py and is chosen by the `cond` partial (an ablation axis, §4.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from imagen.models.attention import AttentionBlock, CrossAttentionBlock, check_attention_backend
from imagen.models.embeddings import TimestepEmbedding, position_embedding
from imagen.models.resblock import Downsample, ResBlock, Upsample, num_groups
from imagen.models.text_conditioning import TextCond, TextConditioning


class UNetStage(nn.Module):
    """A sequence of ResBlocks, AttentionBlocks and resamplers applied with the shared (emb, text) conditioning."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: Tensor, emb: Tensor, cond: TextCond) -> Tensor:
        # h (B, C, H, W); emb (B, E)
        for layer in self.layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, (AttentionBlock, CrossAttentionBlock)):
                h = layer(h, cond.tokens, cond.mask) if layer.takes_text else layer(h)
            else:
                h = layer(h)
        return h


def output_head(channels: int, groups: int, out_channels: int) -> nn.Sequential:
    """GroupNorm -> SiLU -> 3x3 conv, zero-initialised so the network starts by predicting zero."""
    head = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


def validate_args(
    image_size: int,
    channels: int,
    channel_mult: Sequence[int],
    attn_resolutions: Sequence[int],
    head_dim: int,
    dropout: float,
    lowest_attention: str = "the middle block",
) -> list[int]:
    """The constructor checks both U-Nets share -> the resolution of each level of `channel_mult`.

    One ValueError per invalid-configuration case, with the offending values in its message. head_dim must also
    divide the lowest level's width, where each U-Net may put attention (`lowest_attention`, named in the message).
    """
    if len(channel_mult) == 0:
        raise ValueError("channel_mult must name at least one level")
    total_down = 2 ** (len(channel_mult) - 1)
    if image_size % total_down:
        raise ValueError(
            f"image_size {image_size} is not divisible by {total_down}, "
            f"the total downsampling of channel_mult {list(channel_mult)}"
        )
    reachable = [image_size // 2**i for i in range(len(channel_mult))]
    for res in attn_resolutions:
        if res not in reachable:
            raise ValueError(
                f"attention resolution {res} is never reached by the U-Net; reachable resolutions are {reachable}"
            )
    groups = num_groups(channels)
    if channels % groups:
        raise ValueError(f"channels {channels} is not divisible by its {groups} GroupNorm groups")
    attn_levels = {i for i, res in enumerate(reachable) if res in attn_resolutions} | {len(channel_mult) - 1}
    for i in sorted(attn_levels):
        width = channels * channel_mult[i]
        if width % head_dim:
            raise ValueError(
                f"head_dim {head_dim} does not divide {width} channels at attention resolution {reachable[i]}"
                + (f" ({lowest_attention})" if i == len(channel_mult) - 1 else "")
            )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout {dropout} is outside [0, 1)")
    return reachable


class ConditionalUNet(nn.Module):
    """What both U-Nets share: the input layers, the conditioning (§2.4, §2.5) and the call. A subclass calls
    `add_inputs` and sets `self.out`, and defines `body`: its down, middle and up paths.

    `compile_forward()` compiles the call with torch.compile in place (nn.Module.compile: parameter names and
    checkpoints are unchanged) and keeps it compiled across pickling (ddp_spawn) and deepcopy (the EMA copy), which
    nn.Module alone would silently drop."""

    _compile_options: dict | None = None

    def compile_forward(self, **options) -> None:
        """torch.compile(**options) of this U-Net's call, in place; the first call traces and compiles."""
        self._compile_options = dict(options)
        self.compile(**options)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self._compile_options is not None:  # nn.Module.__getstate__ drops the compiled call: compile again
            self.compile(**self._compile_options)

    def add_inputs(
        self,
        in_channels: int,
        lowres_channels: int,
        channels: int,
        embed_dim: int,
        patch_size: int = 1,
        position: str = "none",
        size: int = 0,
    ) -> None:
        """The time embedding, the input convolution, and for SR stages the aug_level embedding (embedded like
        the time, §2.4). `patch_size` p > 1: the input is cut into p x p patches stacked on the channels
        (space-to-depth, torch's pixel_unshuffle) before the input convolution, and the output head's p*p*C_out
        channels are put back (pixel_shuffle) -- the "simple diffusion" patching (Hoogeboom et al. 2023), not in
        Imagen: every feature map is p times smaller on each side, about p*p fewer FLOPs at the same widths.
        `position` (imagen.models.embeddings.POSITIONS) is added to the first feature map, of side `size`."""
        self.lowres_channels, self.in_channels, self.patch_size = lowres_channels, in_channels, patch_size
        # Identity at p = 1: torch's pixel_(un)shuffle copy the tensor even then (no parameters either way).
        self.patchify = nn.PixelUnshuffle(patch_size) if patch_size > 1 else nn.Identity()
        self.unpatchify = nn.PixelShuffle(patch_size) if patch_size > 1 else nn.Identity()
        self.time_embed = TimestepEmbedding(channels, embed_dim)
        self.aug_embed = TimestepEmbedding(channels, embed_dim) if lowres_channels else None
        self.input_conv = nn.Conv2d((in_channels + lowres_channels) * patch_size**2, channels, 3, padding=1)
        self.position = position_embedding(position, channels, size)

    def condition(
        self, t: Tensor, text_emb: Tensor, text_mask: Tensor, aug_level: Tensor | None = None
    ) -> tuple[Tensor, TextCond]:
        """(emb (B, E) = time embedding + pooled text vector (§2.5) [+ the noise-augmentation level's embedding,
        SR stages (§2.4)], the text)."""
        cond = self.text_cond(text_emb, text_mask)
        emb = self.time_embed(t)  # (B, E)
        if cond.pooled is not None:
            emb = emb + cond.pooled
        if self.aug_embed is not None:
            if aug_level is None:
                raise ValueError("a super-resolution U-Net needs aug_level (B,) with its low-resolution image")
            emb = emb + self.aug_embed(aug_level)
        return emb, cond

    def network_input(self, x: Tensor, lowres: Tensor | None) -> Tensor:
        """The input convolution over the noisy image [+ the upsampled low-resolution image, channel-concatenated
        (§2.4)]: (B, channels, H, W)."""
        if (lowres is None) != (self.lowres_channels == 0):
            raise ValueError(
                f"this U-Net takes {self.lowres_channels} low-resolution channels, got "
                f"{'none' if lowres is None else lowres.shape[1]}"
            )
        x = x if lowres is None else torch.cat([x, lowres], dim=1)
        return self.position(self.input_conv(self.patchify(x)))  # (B, C*p*p, H/p, W/p) -> conv [+ position]

    def body(self, h: Tensor, emb: Tensor, cond: TextCond) -> Tensor:
        """(B, channels, H, W) -> (B, C_last, H, W): the down, middle and up paths with their skips."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text_emb: Tensor,
        text_mask: Tensor,
        lowres: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> Tensor:
        # x (B, C_in, H, W); t (B,) in [0, 1]; text_emb (B, L, D_text); text_mask (B, L) bool
        # SR stages: lowres (B, lowres_channels, H, W) upsampled conditioning image; aug_level (B,) in [0, 1]
        emb, cond = self.condition(t, text_emb, text_mask, aug_level)  # (B, E), text
        h = self.network_input(x, lowres)  # (B, channels, H, W)
        return self.unpatchify(self.out(self.body(h, emb, cond)))  # (B, C_out, H, W)


class UNet(ConditionalUNet):
    """Base 64x64 U-Net of Imagen (App. F.1), ADM-style; with `lowres_channels=3` the standard (non-efficient)
    super-resolution U-Net of the Efficient U-Net ablation (App. B.1). `attention`: the attention kernel of every
    attention block (imagen.models.attention: sdpa | xformers | math; None = the module default). `position`: a
    position embedding added after the input convolution (imagen.models.embeddings.POSITIONS: none | sincos)."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        text_dim: int,
        cond: Callable[..., TextConditioning],
        head_dim: int = 64,
        dropout: float = 0.0,
        in_channels: int = 3,
        out_channels: int = 3,
        embed_dim: int | None = None,
        lowres_channels: int = 0,
        attention: str | None = None,
        patch_size: int = 1,
        position: str = "none",
    ) -> None:
        super().__init__()
        channel_mult, attn_resolutions = list(channel_mult), list(attn_resolutions)
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must be a positive divisor of image_size {image_size}")
        # The levels' resolutions (and attn_resolutions) are those of the feature maps: image_size / patch_size first.
        validate_args(image_size // patch_size, channels, channel_mult, attn_resolutions, head_dim, dropout)
        attention = check_attention_backend(attention)  # unet.attention: refused here, before any compute
        embed_dim = 4 * channels if embed_dim is None else embed_dim
        groups = num_groups(channels)
        self.image_size = image_size

        # Text pathway (§2.5): pooled vector of width embed_dim, tokens of width context_dim = embed_dim.
        self.text_cond = cond(text_dim=text_dim, embed_dim=embed_dim, context_dim=embed_dim)
        self.add_inputs(
            in_channels, lowres_channels, channels, embed_dim, patch_size, position, image_size // patch_size
        )

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, embed_dim, groups, dropout)

        def attn(c: int) -> list[nn.Module]:  # one attention site: the conditioning decides how the text enters
            return self.text_cond.attention_layers(c, head_dim, groups, attention)

        resolution, ch = image_size // patch_size, channels
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, channels * mult)]
                ch = channels * mult
                if resolution in attn_resolutions:
                    layers += attn(ch)
                self.down.append(UNetStage(*layers))
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(UNetStage(Downsample(ch)))
                skip_channels.append(ch)
                resolution //= 2

        self.middle = UNetStage(res(ch, ch), *attn(ch), res(ch, ch))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), channels * mult)]
                ch = channels * mult
                if resolution in attn_resolutions:
                    layers += attn(ch)
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    resolution *= 2
                self.up.append(UNetStage(*layers))

        self.out = output_head(ch, groups, out_channels * patch_size**2)

    def body(self, h: Tensor, emb: Tensor, cond: TextCond) -> Tensor:
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, cond)
            skips.append(h)
        h = self.middle(h, emb, cond)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, cond)
        return h
