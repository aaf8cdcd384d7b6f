"""Tests of the base U-Net (App. F.1) and its text-conditioning modes (§2.5, §4.4)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imagen.models import attention, text_conditioning
from imagen.models.text_conditioning import (
    AttentionPoolConditioning,
    CrossAttentionConditioning,
    MeanPoolConditioning,
    SeparateCrossAttentionConditioning,
    TextCond,
)
from imagen.models.unet import UNet

from conftest import CONF as CONF_DIR
from conftest import compose_cfg

CONF = Path(CONF_DIR)
CONDS = {
    "cross_attn": CrossAttentionConditioning,
    "cross_attn_separate": SeparateCrossAttentionConditioning,
    "attn_pool": AttentionPoolConditioning,
    "mean_pool": MeanPoolConditioning,
}
TEXT_DIM = 12
SMALL = dict(image_size=8, channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8, 4], head_dim=8)


def make_unet(
    cond: str = "cross_attn", dtype: torch.dtype = torch.float64, randomize: bool = True, **overrides
) -> UNet:
    """A small U-Net; zero-initialised layers are randomised so that every input reaches the output."""
    torch.manual_seed(0)
    kwargs = {**SMALL, "text_dim": TEXT_DIM, "cond": functools.partial(CONDS[cond]), **overrides}
    model = UNet(**kwargs).to(dtype).eval()
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
    return model


def inputs(batch: int = 2, length: int = 8, lengths=(5, 3), dtype=torch.float64, seed: int = 1):
    """x, t, text_emb (B, length, TEXT_DIM) with garbage at padded positions, mask (B, length)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    t = torch.rand(batch, generator=g, dtype=dtype)
    emb = torch.randn(batch, length, TEXT_DIM, generator=g, dtype=dtype)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    return x, t, emb, mask


def pad(emb: torch.Tensor, mask: torch.Tensor, length: int, fill: float = 123.0):
    """Pad to `length` with large garbage values and mask False; also garble the existing padding."""
    b, l, d = emb.shape
    garbage = fill * torch.randn(b, length, d, dtype=emb.dtype, generator=torch.Generator().manual_seed(7))
    new_mask = torch.zeros(b, length, dtype=torch.bool)
    new_mask[:, :l] = mask
    new_emb = torch.where(new_mask[..., None], torch.nn.functional.pad(emb, (0, 0, 0, length - l)), garbage)
    return new_emb, new_mask


@pytest.mark.parametrize("cond", CONDS)
def test_output_shape(cond):
    model = make_unet(cond, dtype=torch.float32, randomize=False)
    x, t, emb, mask = inputs(dtype=torch.float32)
    out = model(x, t, emb, mask)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32


def test_out_channels_and_conditioning_outputs():
    model = make_unet(out_channels=6, randomize=False)
    x, t, emb, mask = inputs()
    assert model(x, t, emb, mask).shape == (2, 6, 8, 8)
    c = model.text_cond(emb, mask)
    assert isinstance(c, TextCond) and c.pooled.shape == (2, 64) and c.tokens.shape == (2, 8, 64)
    for name in ("attn_pool", "mean_pool"):
        c = make_unet(name, randomize=False).text_cond(emb, mask)
        assert c.pooled.shape == (2, 64) and c.tokens is None and c.mask is None


@pytest.mark.parametrize("cond", CONDS)
def test_padding_invariance(cond):
    model = make_unet(cond)
    x, t, emb, mask = inputs(length=8)
    with torch.no_grad():
        out8 = model(x, t, *pad(emb, mask, 8))
        out20 = model(x, t, *pad(emb, mask, 20, fill=-7.0))
    assert out8.abs().max() > 1e-3  # non-trivial output (randomised weights)
    torch.testing.assert_close(out8, out20, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cond", CONDS)
def test_mask_honoured(cond):
    model = make_unet(cond)
    x, t, emb, mask = inputs()
    with torch.no_grad():
        ref = model(x, t, emb, mask)
        masked_changed = emb.clone()
        masked_changed[~mask] = 1e3
        torch.testing.assert_close(model(x, t, masked_changed, mask), ref, rtol=1e-10, atol=1e-10)
        valid_changed = emb.clone()
        valid_changed[0, 0] += torch.linspace(
            -1.0, 1.0, TEXT_DIM, dtype=emb.dtype
        )  # not a constant: LayerNorm removes those
        changed = model(x, t, valid_changed, mask)
    assert (changed[0] - ref[0]).abs().max() > 1e-6
    torch.testing.assert_close(changed[1], ref[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cond", ["cross_attn", "cross_attn_separate"])
def test_cross_attention_reaches_tokens_beyond_pooling(cond):
    """With cross attention the tokens feed the attention layers directly, not only through the pooled vector."""
    model = make_unet(cond)
    x, t, emb, mask = inputs()
    cond = model.text_cond(emb, mask)
    with torch.no_grad():
        ref = model(x, t, emb, mask)
        model.text_cond.to_context.weight.add_(1.0)  # changes tokens, not the pooled vector
        assert (model(x, t, emb, mask) - ref).abs().max() > 1e-6
    torch.testing.assert_close(model.text_cond(emb, mask).pooled, cond.pooled)


@pytest.mark.parametrize("cond", CONDS)
def test_null_condition(cond):
    """All-False mask (CFG null condition, §2.2): finite, and independent of padded length and values."""
    model = make_unet(cond)
    x, t, emb, _ = inputs()
    with torch.no_grad():
        out8 = model(x, t, torch.zeros_like(emb), torch.zeros(2, 8, dtype=torch.bool))
        emb20 = torch.randn(2, 20, TEXT_DIM, dtype=emb.dtype)
        out20 = model(x, t, emb20, torch.zeros(2, 20, dtype=torch.bool))
        pooled = model.text_cond(emb20, torch.zeros(2, 20, dtype=torch.bool)).pooled
    assert torch.isfinite(out8).all() and torch.isfinite(pooled).all()
    torch.testing.assert_close(out8, out20, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pooled[0], pooled[1])  # one deterministic null vector


def test_null_condition_mixed_batch_and_grads():
    """A batch mixing real and dropped prompts stays finite in forward and backward (float32)."""
    model = make_unet(dtype=torch.float32).train()
    x, t, emb, mask = inputs(dtype=torch.float32)
    mask[1] = False
    emb[1] = 0.0
    out = model(x, t, emb, mask)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cond", CONDS)
def test_permutation_invariance_of_valid_tokens(cond):
    """Pooling is permutation invariant; so is attention over text keys (the order lives in the encoder's embeddings)."""
    model = make_unet(cond)
    x, t, emb, mask = inputs(lengths=(5, 5))
    perm = torch.tensor([3, 0, 4, 1, 2, 5, 6, 7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, emb[:, perm], mask), model(x, t, emb, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("text_layernorm", [True, False])
def test_text_layernorm_switch(text_layernorm):
    partial = functools.partial(CrossAttentionConditioning, text_layernorm=text_layernorm)
    model = UNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": partial})
    assert isinstance(model.text_cond.norm, torch.nn.LayerNorm) == text_layernorm


@pytest.mark.parametrize("cond", CONDS)
def test_gradients_reach_every_parameter(cond):
    torch.manual_seed(0)
    model = UNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": functools.partial(CONDS[cond])}).train()
    x, t, emb, mask = inputs(dtype=torch.float32)
    target = torch.randn_like(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        (model(x, t, emb, mask) - target).square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
        # step 0 moves the zero-initialised output conv, step 1 the zero-initialised last conv / output
        # projection of every block; from step 2 on, every parameter has a non-zero gradient
        if step == 2:
            zero = [n for n, p in model.named_parameters() if p.grad.abs().max() == 0]
            assert not zero, zero
        optimizer.step()


def test_cross_attention_layers_own_text_projections():
    cross = make_unet("cross_attn", randomize=False)
    pooled = make_unet("attn_pool", randomize=False)
    blocks = [m for m in cross.modules() if isinstance(m, attention.AttentionBlock)]
    assert len(blocks) == 7  # one per down block (8x8, 4x4), the middle, two per up level (4x4, 8x8)
    assert all(b.to_text_kv is not None for b in blocks)
    assert all(m.to_text_kv is None for m in pooled.modules() if isinstance(m, attention.AttentionBlock))


def test_separate_cross_attention_layout():
    """cross_attn_separate: every attention site is text-free self-attention followed by a text-only cross-attention
    layer; its null condition (no valid token) leaves the cross-attention layers the identity."""
    model = make_unet("cross_attn_separate")
    kinds = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, (attention.AttentionBlock, attention.CrossAttentionBlock))
    ]
    assert kinds == ["AttentionBlock", "CrossAttentionBlock"] * 7
    assert all(m.to_text_kv is None for m in model.modules() if isinstance(m, attention.AttentionBlock))
    x, t, emb, _ = inputs()
    null = torch.zeros(2, 8, dtype=torch.bool)
    with torch.no_grad():
        ref = model(x, t, emb, null)
        for m in model.modules():
            if isinstance(m, attention.CrossAttentionBlock):
                m.to_text_kv.weight.add_(1.0)  # the text's keys/values change: no effect without valid tokens
        torch.testing.assert_close(model(x, t, emb, null), ref, rtol=1e-10, atol=1e-10)


def test_attention_backend_is_pluggable():
    def manual(q, k, v, key_mask):
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, h, N, M)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v

    model = make_unet()
    x, t, emb, mask = inputs()
    attention.register_attention_backend("manual", manual)
    with torch.no_grad():
        ref = model(x, t, emb, mask)
        try:
            attention.set_attention_backend("manual")
            out = model(x, t, emb, mask)
        finally:
            attention.set_attention_backend("sdpa")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention.set_attention_backend("nope")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(image_size=36, channel_mult=[1, 2, 3, 4], attn_resolutions=[]),
            "image_size 36 is not divisible by 8, the total downsampling of channel_mult [1, 2, 3, 4]",
        ),
        (
            dict(attn_resolutions=[2]),
            "attention resolution 2 is never reached by the U-Net; reachable resolutions are [8, 4]",
        ),
        (dict(attn_resolutions=[16, 4]), "attention resolution 16 is never reached"),
        (dict(channels=34, head_dim=2), "channels 34 is not divisible by its 8 GroupNorm groups"),
        (
            dict(channels=200, attn_resolutions=[], head_dim=8),
            "channels 200 is not divisible by its 32 GroupNorm groups",
        ),
        (dict(head_dim=12), "head_dim 12 does not divide 16 channels at attention resolution 8"),
        (
            dict(attn_resolutions=[], head_dim=24),
            "head_dim 24 does not divide 32 channels at attention resolution 4 (the middle block)",
        ),
        (dict(dropout=1.0), "dropout 1.0 is outside [0, 1)"),
        (dict(dropout=-0.1), "dropout -0.1 is outside [0, 1)"),
    ],
)
def test_invalid_config(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": CrossAttentionConditioning, **overrides})


def test_attention_at_reachable_resolutions_only():
    model = make_unet(randomize=False, attn_resolutions=[4])  # only the 4x4 level (+ middle)
    sizes = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
        for m in model.modules()
        if isinstance(m, attention.AttentionBlock)
    ]
    x, t, emb, mask = inputs()
    model(x, t, emb, mask)
    for h in hooks:
        h.remove()
    assert sizes and set(sizes) == {4}


@pytest.mark.parametrize("cond", CONDS)
def test_cond_yaml_is_a_partial(cond):
    partial = instantiate(OmegaConf.load(CONF / "cond" / f"{cond}.yaml"))
    module = partial(text_dim=TEXT_DIM, embed_dim=32, context_dim=16)
    assert isinstance(module, CONDS[cond])


SIZES = {
    "tiny": (1e6, 8e6),
    "tiny_p2": (1e6, 8e6),
    "base_300m": 300e6,
    "base_500m": 500e6,
    "base_1b": 1e9,
    "base_2b": 2e9,
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_parameter_counts(name):
    """Every conf/unet size, built on the meta device with T5-XXL text (4096) and cross attention."""
    cfg = compose_cfg([f"unet={name}"]).unet  # composed: an option may extend another (tiny_p2: tiny + patches)
    image_size = 32 if name.startswith("tiny") else 64
    cond = instantiate(OmegaConf.load(CONF / "cond" / "cross_attn.yaml"))
    with torch.device("meta"):
        model = instantiate(cfg)(image_size=image_size, text_dim=4096, cond=cond)
    count = sum(p.numel() for p in model.parameters())
    expected = SIZES[name]
    if isinstance(expected, tuple):
        assert expected[0] <= count <= expected[1], count
    else:
        assert abs(count / expected - 1) <= 0.10, count


# Super-resolution U-Nets (lowres_channels 3): the paper's stated layouts give these counts with our blocks
# (the names keep the paper's nominal sizes; see the YAML comments). (expected M, output size, text_dim)
SR_SIZES = {
    "sr256_600m": (462.6, 256, 4096),
    "sr1024_400m": (458.4, 256, 4096),
    "sr256_standard": (426.2, 256, 4096),
    "sr_tiny": (3.17, 64, 384),
    "sr_tiny_standard": (3.18, 64, 384),
}
MATCHED = {"sr256_standard": "sr256_600m", "sr_tiny_standard": "sr_tiny"}  # standard twin -> efficient model


def sr_count(name: str) -> int:
    expected, size, text_dim = SR_SIZES[name]
    cond = instantiate(OmegaConf.load(CONF / "cond" / "cross_attn.yaml"))
    with torch.device("meta"):
        model = instantiate(OmegaConf.load(CONF / "unet" / f"{name}.yaml"))(
            image_size=size, text_dim=text_dim, cond=cond, lowres_channels=3
        )
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SR_SIZES))
def test_sr_parameter_counts(name):
    count = sr_count(name)
    assert abs(count / (SR_SIZES[name][0] * 1e6) - 1) <= 0.01, count
    if name in MATCHED:  # the standard U-Net of the Efficient U-Net ablation is matched in size
        assert abs(count / sr_count(MATCHED[name]) - 1) <= 0.10


def test_every_unet_yaml_is_covered():
    assert {p.stem for p in (CONF / "unet").glob("*.yaml")} == set(SIZES) | set(SR_SIZES)


def test_tiny_trains_at_32_and_runs_at_64():
    cfg = OmegaConf.load(CONF / "unet" / "tiny.yaml")
    cond = instantiate(OmegaConf.load(CONF / "cond" / "cross_attn.yaml"))
    torch.manual_seed(0)
    model = instantiate(cfg)(image_size=32, text_dim=384, cond=cond)
    emb, mask = torch.randn(2, 6, 384), torch.ones(2, 6, dtype=torch.bool)
    out = model(torch.randn(2, 3, 32, 32), torch.rand(2), emb, mask)
    out.mean().backward()
    assert out.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64), torch.rand(1), emb[:1], mask[:1]).shape == (1, 3, 64, 64)


def test_patching_is_space_to_depth_and_back():
    """patch_size p: the network sees (B, 3*p*p, H/p, W/p) and returns full-resolution pixels that differ within a
    patch; the feature maps (and attn_resolutions) are p times smaller, the FLOPs about p*p fewer."""
    from imagen.flops import unet_forward_flops

    model = make_unet(image_size=16, patch_size=2)  # feature maps 8, 4: SMALL's attn_resolutions [8, 4]
    assert model.input_conv.in_channels == 12 and model.out[-1].out_channels == 12
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    _, t, emb, mask = inputs()
    seen = []
    model.input_conv.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape, out.shape)))
    out = model(x, t, emb, mask)
    assert seen == [((2, 12, 8, 8), (2, 16, 8, 8))] and out.shape == (2, 3, 16, 16)
    assert not torch.allclose(out[..., 0::2, 0::2], out[..., 1::2, 0::2])  # a pixel each, not one per patch
    # pixel (2i + a, 2j + b) of channel c is the head's channel 4c + 2a + b at (i, j) (pixel_shuffle's layout)
    head = model.out(model.body(model.network_input(x, None), *model.condition(t, emb, mask)))
    assert torch.equal(out[:, 1, 5::2, 2::2], head[:, 4 * 1 + 2 * 1 + 0, 2:, 1:])
    patched = make_unet(image_size=16, patch_size=2, dtype=torch.float32, randomize=False)
    flat = make_unet(image_size=16, attn_resolutions=[16, 8], dtype=torch.float32, randomize=False)
    assert 0.2 < unet_forward_flops(patched, 8) / unet_forward_flops(flat, 8) < 0.3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=16, patch_size=3), "patch_size 3 must be a positive divisor of image_size 16"),
        (dict(image_size=8, patch_size=0), "patch_size 0 must be a positive divisor of image_size 8"),
        (dict(image_size=16, patch_size=2, attn_resolutions=[16]), "attention resolution 16 is never reached"),
    ],
)
def test_invalid_patching(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        UNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": CrossAttentionConditioning, **overrides})


def test_sincos_position_embedding_is_a_fixed_row_and_column_table():
    """unet.position=sincos adds to the first feature map (B, C, H, W) a table whose first C/2 channels are the row
    index's sinusoids and the last C/2 the column index's; `none` (the default) is the U-Net without it, exactly."""
    from imagen.models.embeddings import SinCosPosition2D, sinusoidal_embedding

    table = SinCosPosition2D(8, 4).table  # (1, 8, 4, 4)
    pos = sinusoidal_embedding(torch.arange(4.0), 4)  # (4, 4): index -> features
    assert torch.equal(table[0, :4, 2, 3], pos[2]) and torch.equal(table[0, 4:, 2, 3], pos[3])
    assert torch.equal(table[0, :4, :, 0], table[0, :4, :, 3]) and torch.equal(table[0, 4:, 0], table[0, 4:, 3])
    assert SinCosPosition2D(8, 4).state_dict() == {}  # not saved: checkpoints are unchanged
    plain, none, sincos = make_unet(), make_unet(position="none"), make_unet(position="sincos")
    assert plain.state_dict().keys() == sincos.state_dict().keys()
    x, t, emb, mask = inputs()
    assert torch.equal(plain(x, t, emb, mask), none(x, t, emb, mask))
    # The same weights with the table: the first feature map moves by exactly the table.
    sincos.load_state_dict(plain.state_dict())
    delta = sincos.network_input(x, None) - plain.network_input(x, None)
    assert torch.allclose(delta, SinCosPosition2D(16, 8).table.double().expand_as(delta))
    assert not torch.allclose(sincos(x, t, emb, mask), plain(x, t, emb, mask))
    with pytest.raises(ValueError, match="unknown unet.position 'learned'; valid: none, sincos"):
        make_unet(position="learned")
    with pytest.raises(ValueError, match="even number of channels"):
        SinCosPosition2D(7, 4)


@pytest.mark.parametrize("cond", ["cross_attn", "cross_attn_separate"])
def test_unpooled_cross_attention(cond):
    """pooled=False: no pooled vector and no pooling weights; the text still changes the output, through attention."""
    torch.manual_seed(0)
    partial = functools.partial(CONDS[cond], pooled=False)
    model = UNet(**{**SMALL, "text_dim": TEXT_DIM, "cond": partial}).to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    assert model.text_cond.pool is None and not any("pool" in n for n, _ in model.named_parameters())
    x, t, emb, mask = inputs()
    assert model.text_cond(emb, mask).pooled is None
    with torch.no_grad():
        out = model(x, t, emb, mask)
        other = emb + torch.randn(emb.shape, dtype=emb.dtype, generator=torch.Generator().manual_seed(3))
        assert (model(x, t, other, mask) - out).abs().max() > 1e-6
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cond", ["cross_attn", "cross_attn_separate"])
def test_withhold_tokens(cond):
    """The diagnostic: with the tokens withheld the attention layers see the null condition (the tokens' projection no
    longer matters) while the pooled vector still does; removing the hook restores the model."""
    model = make_unet(cond)
    x, t, emb, mask = inputs()
    with torch.no_grad():
        ref = model(x, t, emb, mask)
        handle = text_conditioning.withhold_tokens(model.text_cond)
        withheld = model(x, t, emb, mask)
        assert (withheld - ref).abs().max() > 1e-6
        model.text_cond.to_context.weight.add_(1.0)  # the tokens change: no effect while withheld
        torch.testing.assert_close(model(x, t, emb, mask), withheld, rtol=1e-10, atol=1e-10)
        model.text_cond.pool.to_out.bias.add_(1.0)  # the pooled vector still reaches the output
        assert (model(x, t, emb, mask) - withheld).abs().max() > 1e-6
        handle.remove()
        assert (model(x, t, emb, mask) - ref).abs().max() > 1e-6  # tokens back (with the changed weights)
