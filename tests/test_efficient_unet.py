"""Efficient U-Net (App. B.1): the four changes against the base U-Net, shapes, conditioning, padding invariance."""

from __future__ import annotations

import functools

import pytest
import torch
from test_unet import CONDS, TEXT_DIM, inputs, pad

from imagen.models.attention import AttentionBlock, CrossAttentionBlock
from imagen.models.efficient_unet import SKIP_SCALE, EfficientUNet
from imagen.models.resblock import Downsample, ResBlock, Upsample

SMALL = dict(
    image_size=8, channels=16, channel_mult=[1, 2, 2], num_res_blocks=[1, 2, 3], attn_resolutions=[], head_dim=8
)


def make(cond: str = "cross_attn", **overrides) -> EfficientUNet:
    torch.manual_seed(0)
    model = EfficientUNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": functools.partial(CONDS[cond]), **overrides})
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("cond", CONDS)
def test_shapes_sr_input_and_padding_invariance(cond):
    model = make(cond, lowres_channels=3)
    x, t, emb, mask = inputs()
    low, aug = torch.randn_like(x), torch.rand(x.shape[0], dtype=x.dtype)  # the upsampled low-res image, aug_level
    out = model(x, t, emb, mask, lowres=low, aug_level=aug)
    assert out.shape == x.shape
    padded = model(x, t, *pad(emb, mask, 12), lowres=low, aug_level=aug)
    torch.testing.assert_close(out, padded)
    # Both conditioning inputs matter.
    assert not torch.allclose(out, model(x, t, emb, mask, lowres=low.flip(0), aug_level=aug))
    assert not torch.allclose(out, model(x, t, emb, mask, lowres=low, aug_level=1 - aug))


def test_blocks_per_level_and_reversed_resampling_order():
    model = make()
    kinds = [[type(layer) for layer in stage.layers] for stage in model.down]
    # Down blocks: downsample FIRST, then the level's residual blocks (1, 2, 3); text cross-attention at the
    # lowest level, where there is no self-attention (the 1024 model's layout).
    cross = CrossAttentionBlock
    assert kinds == [[ResBlock], [Downsample, ResBlock, ResBlock], [Downsample, ResBlock, ResBlock, ResBlock, cross]]
    ups = [[type(layer) for layer in stage.layers] for stage in model.up]
    # Up blocks: residual blocks, then upsample LAST.
    assert ups == [[ResBlock, ResBlock, ResBlock, cross, Upsample], [ResBlock, ResBlock, Upsample], [ResBlock]]
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())  # no self-attention unless configured
    with_attn = make(attn_resolutions=[8, 2])  # self-attention (+ text keys/values) where configured
    assert isinstance(with_attn.down[0].layers[-1], AttentionBlock)
    assert isinstance(with_attn.down[2].layers[-1], AttentionBlock)
    assert not any(isinstance(m, CrossAttentionBlock) for m in with_attn.modules())
    pooled_only = make("mean_pool")  # no tokens: no cross-attention either
    assert not any(isinstance(m, (AttentionBlock, CrossAttentionBlock)) for m in pooled_only.modules())


def test_skip_connections_are_scaled_by_one_over_sqrt2():
    model = make()
    x, t, emb, mask = inputs()
    seen = []
    hook = model.up[-1].layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(x, t, emb, mask)
    hook.remove()
    h0 = model.input_conv(x)
    cond = model.text_cond(emb, mask)
    first_skip = model.down[0](h0, model.time_embed(t) + cond.pooled, cond)  # the level-0 block's output
    torch.testing.assert_close(seen[0][:, -first_skip.shape[1] :], first_skip * SKIP_SCALE)


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="one count >= 1 per level"):
        make(num_res_blocks=[1, 2])
    with pytest.raises(ValueError, match="never reached"):
        make(attn_resolutions=[3])
    with pytest.raises(ValueError, match="not divisible"):
        make(image_size=6)


def test_residual_blocks_run_at_the_lower_resolution():
    """Reversed order (App. B.1): a down block's residual blocks see the downsampled feature map."""
    model = make(image_size=16)
    sizes = []
    hooks = [
        b.register_forward_hook(lambda m, a, out: sizes.append(out.shape[-1]))
        for b in model.down[1].layers
        if isinstance(b, ResBlock)
    ]
    x, t, emb, mask = inputs()
    model(torch.nn.functional.interpolate(x, size=16), t, emb, mask)
    for h in hooks:
        h.remove()
    assert sizes == [8, 8]
