"""GPU efficiency: the FLOP count and MFU (imagen.flops), the attention backends (sdpa / xformers / math), the
`compile` and `channels_last` switches, the benchmark's MFU, compare and data modes, and scripts/device_check.sh.
What needs a GPU (xformers against SDPA in bf16) skips without CUDA and xformers."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from imagen.build import build_unet
from imagen.diffusion.loss import DiffusionLoss
from imagen.diffusion.parameterization import EpsPrediction
from imagen.diffusion.schedule import CosineSchedule
from imagen.flops import (
    ThroughputMFU,
    count_flops,
    meta_forward_flops,
    mfu,
    mfu_report,
    peak_tflops,
    training_flops_per_image,
    unet_forward_flops,
    unet_inputs,
)
from imagen.models import attention
from imagen.models.attention import (
    XFORMERS_UNAVAILABLE,
    AttentionBlock,
    CrossAttentionBlock,
    attention_backend,
    math_attention,
    sdpa_attention,
)
from imagen.models.efficient_unet import EfficientUNet
from imagen.models.text_conditioning import CrossAttentionConditioning
from imagen.models.unet import UNet

from conftest import CONF, ROOT, compose_cfg

sys.path.insert(0, str(ROOT / "scripts"))

HAS_XFORMERS = torch.cuda.is_available() and importlib.util.find_spec("xformers") is not None
SMALL = dict(image_size=16, channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], head_dim=8)
SMALL_SR = dict(SMALL, num_res_blocks=[1, 2], attn_resolutions=[], lowres_channels=3)
TINY = ["image_size=16", "unet.channel_mult=[1,2]", "unet.attn_resolutions=[8]"]


def small_unet(cls=UNet, **overrides) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {**(SMALL if cls is UNet else SMALL_SR), **overrides}
    return cls(**kwargs, text_dim=12, cond=functools.partial(CrossAttentionConditioning))


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Every parameter random, so that the zero-initialised output layers do not hide the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------------------------ FLOPs and MFU


def test_conv_flops_match_the_closed_form():
    b, c_in, c_out, k, size = 2, 4, 8, 3, 16
    flops = meta_forward_flops(nn.Conv2d(c_in, c_out, k, padding=1), torch.empty(b, c_in, size, size, device="meta"))
    assert flops == 2 * b * c_out * size * size * c_in * k * k  # a multiply-add is 2 FLOPs; the bias is not counted


@pytest.mark.parametrize("cls", [UNet, EfficientUNet])
def test_training_flops_are_three_forwards_and_match_a_counted_backward(cls):
    unet = small_unet(cls)
    forward = unet_forward_flops(unet, text_len=8, batch=2)
    assert forward == 2 * unet_forward_flops(unet, text_len=8, batch=1)  # linear in the batch
    assert training_flops_per_image(unet, text_len=8) == 3 * forward // 2
    # The x3 convention against what the counter sees in a real forward + backward (math attention: counted on
    # CPU): the backward costs slightly less than 2 forwards (no gradient of the inputs).
    inputs = unet_inputs(unet, 2, 8, device="cpu")
    with attention_backend(unet, "math"):
        measured = count_flops(lambda: unet(**inputs).sum().backward())
    assert 0.98 * 3 * forward <= measured <= 3 * forward
    # More text tokens, more FLOPs (the text keys of every attention layer).
    assert unet_forward_flops(unet, text_len=16) > unet_forward_flops(unet, text_len=8)


def test_flops_do_not_depend_on_the_backend_memory_format_or_compile():
    unet = small_unet()
    reference = training_flops_per_image(unet, 8)
    with attention_backend(unet, "sdpa"):
        assert training_flops_per_image(unet, 8) == reference
    unet.to(memory_format=torch.channels_last).compile_forward(backend="eager")
    assert training_flops_per_image(unet, 8) == reference  # counted on the eager forward, meta tensors


def test_mfu_arithmetic_and_report():
    assert mfu(1e12, 100.0, 1000.0) == pytest.approx(0.1)  # 1 TFLOP x 100/s over 1000 TFLOP/s
    assert mfu(1e12, 100.0, None) is None
    report = mfu_report(596_000_000_000, 330.0, "NVIDIA H100 80GB HBM3")
    assert report["flops_per_image"] == 596_000_000_000 and report["peak_tflops"] == 989.4
    assert report["achieved_tflops"] == pytest.approx(196.68)
    assert report["mfu"] == pytest.approx(196.68 / 989.4, abs=1e-4)
    unknown = mfu_report(10**9, 5.0, "x86_64")
    assert unknown["mfu"] is None and unknown["peak_tflops"] is None and unknown["achieved_tflops"] == 0.005


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA L4", None),
        ("x86_64", None),
    ],
)
def test_peak_table_lookup(name, peak):
    assert peak_tflops(name) == peak


def test_throughput_callback_counts_the_batch_text_length():
    class Encoder:  # what the callback reads of a FrozenTextEncoder
        max_length = 20

        @staticmethod
        def tokenizer(captions, **kwargs):
            return {"input_ids": [[0] * 5 for _ in captions]}  # padded to the longest: 5 tokens

    task = SimpleNamespace(unet=small_unet(), text_encoder=Encoder())
    monitor = ThroughputMFU(batch_size_fn=len)
    online = {"caption": ["a red circle", "two squares"]}
    assert monitor.flops_per_image(task, online) == training_flops_per_image(task.unet, 5)
    cached = {**online, "text_emb": torch.zeros(2, 7, 12)}  # text=cached: the batch's own length
    assert monitor.flops_per_image(task, cached) == training_flops_per_image(task.unet, 7)
    assert ThroughputMFU(len, text_len=3).flops_per_image(task, cached) == training_flops_per_image(task.unet, 3)


class _TinyTask(pl.LightningModule):
    """A LightningModule with a `unet`, as ImagenModule has one: the callback counts that."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = small_unet()

    def training_step(self, batch, batch_idx):
        return self.unet(**batch).square().mean()

    def train_dataloader(self):
        batch = unet_inputs(self.unet, 2, 8, device="cpu")
        return torch.utils.data.DataLoader([batch] * 8, batch_size=None)

    def configure_optimizers(self):
        return torch.optim.SGD(self.unet.parameters(), lr=1e-3)


@pytest.mark.slow
def test_throughput_callback_logs_flops_and_mfu(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    task = _TinyTask()
    monitor = ThroughputMFU(
        batch_size_fn=lambda batch: batch["x"].shape[0], text_len=8, peak_tflops=1e-3, window_size=2
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=4,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(task)
    assert task.flops_per_batch == 2 * training_flops_per_image(task.unet, 8)
    logged = (Path(trainer.logger.log_dir) / "metrics.csv").read_text()
    assert "train/device/flops_per_sec" in logged and "train/device/mfu" in logged


# ------------------------------------------------------------------------------------------------ attention backends


def _qkv(mask_lengths, heads=2, n=6, m=7, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    b = len(mask_lengths)
    q, k, v = (torch.randn(b, heads, length, d, generator=g, dtype=dtype) for length in (n, m, m))
    mask = torch.arange(m)[None, :] < torch.tensor(mask_lengths)[:, None]  # (B, M), True = valid
    return q, k, v, mask


@pytest.mark.parametrize("lengths", [None, (7, 3, 1), (7, 0)], ids=["no_mask", "padded", "fully_padded_row"])
def test_sdpa_equals_math_in_float32(lengths):
    q, k, v, mask = _qkv(lengths or (7, 7))
    key_mask = None if lengths is None else mask
    torch.testing.assert_close(sdpa_attention(q, k, v, key_mask), math_attention(q, k, v, key_mask))
    if lengths == (7, 0):  # a query with no valid key: zero output from both (the blocks never build one)
        assert math_attention(q, k, v, key_mask)[1].abs().max() == 0


@pytest.mark.parametrize("cls", [UNet, EfficientUNet])
def test_unet_outputs_agree_across_backends(cls):
    """The whole U-Net with its configured backend: sdpa and math (the oracle) give the same output, with padding and
    with the classifier-free-guidance null condition (an all-False mask) in the batch."""
    sdpa_net = small_unet(cls, attention="sdpa")
    randomize(sdpa_net)
    math_net = copy.deepcopy(sdpa_net)
    for block in math_net.modules():
        if isinstance(block, (AttentionBlock, CrossAttentionBlock)):
            block.backend = "math"
    inputs = unet_inputs(sdpa_net, 3, 6, device="cpu")
    inputs["x"] = torch.randn_like(inputs["x"])
    inputs["text_emb"] = torch.randn_like(inputs["text_emb"])
    inputs["text_mask"] = torch.arange(6)[None, :] < torch.tensor([6, 2, 0])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(sdpa_net(**inputs), math_net(**inputs), rtol=1e-4, atol=1e-4)
    blocks = [m for m in sdpa_net.modules() if isinstance(m, (AttentionBlock, CrossAttentionBlock))]
    assert blocks and all(b.backend == "sdpa" for b in blocks)


@pytest.mark.skipif(HAS_XFORMERS, reason="this machine can run xformers")
def test_xformers_is_refused_at_build_without_cuda_and_the_package():
    assert XFORMERS_UNAVAILABLE == (
        "unet.attention=xformers needs CUDA and the xformers package (pip install -r requirements-gpu.txt); "
        "use unet.attention=sdpa"
    )
    with pytest.raises(ValueError) as err:
        build_unet(compose_cfg([*TINY, "unet.attention=xformers"]), text_dim=12)
    assert str(err.value) == XFORMERS_UNAVAILABLE
    with pytest.raises(ValueError, match=r"needs CUDA and the xformers package"):
        small_unet(EfficientUNet, attention="xformers")


def test_unknown_backend_names_the_options():
    message = r"unknown attention backend 'flash3'; registered: \['math', 'sdpa', 'xformers'\]"
    with pytest.raises(ValueError, match=message):
        small_unet(attention="flash3")
    with pytest.raises(ValueError, match=message):
        build_unet(compose_cfg([*TINY, "unet.attention=flash3"]), text_dim=12)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention.set_attention_backend("nope")


@pytest.mark.skipif(not HAS_XFORMERS, reason="needs CUDA and xformers (requirements-gpu.txt)")
@pytest.mark.parametrize("lengths", [None, (77, 13, 1)], ids=["no_mask", "padded"])
def test_xformers_equals_sdpa_in_bf16_on_gpu(lengths):
    """Key lengths that are not multiples of 8 (the bias alignment), forward and gradients, within bf16 tolerance."""
    q, k, v, mask = (t.cuda() for t in _qkv(lengths or (77,) * 3, heads=4, n=64, m=77, d=64))
    key_mask = None if lengths is None else mask
    grads = []
    for fn in (attention.sdpa_attention, attention.xformers_attention):
        leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, key_mask)
        out.float().square().sum().backward()
        grads.append((out.float(), [t.grad.float() for t in leaves]))
    (ref, ref_grads), (out, out_grads) = grads
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(out_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not HAS_XFORMERS, reason="needs CUDA and xformers (requirements-gpu.txt)")
def test_xformers_unet_matches_sdpa_unet_on_gpu():
    net = small_unet(attention="sdpa").cuda()
    randomize(net)
    inputs = {k: v.cuda() for k, v in unet_inputs(net, 3, 13, device="cpu").items()}
    inputs["x"], inputs["text_emb"] = torch.randn_like(inputs["x"]), torch.randn_like(inputs["text_emb"])
    inputs["text_mask"] = (torch.arange(13)[None, :] < torch.tensor([13, 5, 0])[:, None]).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = net(**inputs)
        with attention_backend(net, "xformers"):
            out = net(**inputs)
    torch.testing.assert_close(out.float(), ref.float(), rtol=3e-2, atol=3e-2)


# ------------------------------------------------------------------------------------------------ configs and switches


def _stage_for(name: str) -> list[str]:
    if name.startswith("sr256"):
        return ["stage=sr256"]
    if name.startswith("sr1024"):
        return ["stage=sr1024"]
    if name.startswith("sr_tiny"):
        return ["stage=sr64"]
    return ["stage=base64"] if name.startswith("base") else []


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF) / "unet").glob("*.yaml")))
def test_every_unet_config_has_the_attention_key_and_builds(name):
    cfg = compose_cfg([f"unet={name}", *_stage_for(name)])
    assert cfg.unet.attention == "sdpa"
    with torch.device("meta"):  # the paper-size U-Nets too: no memory
        unet = build_unet(cfg, text_dim=384)
    blocks = [m for m in unet.modules() if isinstance(m, (AttentionBlock, CrossAttentionBlock))]
    assert blocks and all(b.backend == "sdpa" for b in blocks)


def test_compiled_unet_stays_compiled_across_pickle_and_deepcopy():
    unet = small_unet()
    unet.compile_forward(backend="eager")  # no code generation: fast; training uses the default (inductor)
    for clone in (copy.deepcopy(unet), pickle.loads(pickle.dumps(unet))):  # the EMA copy; ddp_spawn
        assert clone._compiled_call_impl is not None and clone._compile_options == {"backend": "eager"}
    assert set(unet.state_dict()) == set(small_unet().state_dict())  # in place: checkpoints keep their keys


def _loss_and_grads(cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor], nn.Module]:
    """The diffusion loss (App. A) of the config's U-Net on a fixed batch, and its gradients."""
    unet = build_unet(cfg, text_dim=12)
    randomize(unet)
    g = torch.Generator().manual_seed(1)
    x, emb = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.manual_seed(2)  # t and the noise
    loss = DiffusionLoss(CosineSchedule(), EpsPrediction())(lambda z, t: unet(z, t, emb, mask), x)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in unet.named_parameters()}, unet


def test_channels_last_gives_the_same_loss():
    ref_loss, ref_grads, ref = _loss_and_grads(compose_cfg([*TINY, "channels_last=false"]))
    loss, grads, unet = _loss_and_grads(compose_cfg([*TINY, "channels_last=true"]))
    assert unet.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not ref.input_conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compile_builds_and_trains_one_step(monkeypatch):
    """`compile=true`: the config's U-Net builds compiled, its loss and gradients equal the eager ones, an update step
    runs. Traced by dynamo with AOT autograd but without inductor's C++ code generation (`aot_eager`: inductor takes
    ~90 s on 2 cores with a cold cache; the GPU check, scripts/device_check.sh, measures inductor)."""
    from imagen.models.unet import ConditionalUNet

    compile_forward = ConditionalUNet.compile_forward
    monkeypatch.setattr(
        ConditionalUNet, "compile_forward", lambda self, **o: compile_forward(self, **{"backend": "aot_eager", **o})
    )
    ref_loss, ref_grads, _ = _loss_and_grads(compose_cfg(TINY))
    loss, grads, unet = _loss_and_grads(compose_cfg([*TINY, "++compile=true"]))
    assert unet._compiled_call_impl is not None
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)
    before = unet.input_conv.weight.detach().clone()
    torch.optim.Adam(unet.parameters(), lr=1e-3).step()
    assert not torch.equal(unet.input_conv.weight, before)


# ------------------------------------------------------------------------------------------------ benchmark, device check


def test_benchmark_data_mode_on_tiny_shards(tmp_path, capsys):
    import benchmark

    bench = ["bench.mode=data", "bench.batch_size=4", "bench.batches=1", "bench.repeats=1", "bench.warmup=1"]
    benchmark.main(
        [*bench, "bench.data_samples=8", "bench.data_shards=2", "bench.jpeg_size=[96,64]", "bench.resolutions=[16,32]"]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "data" and out["shards"].startswith("temporary: 8 JPEGs 96x64")
    assert [(r["resolution"], r["num_workers"]) for r in out["results"]] == [(16, 0), (32, 0)]
    assert all(r["images_per_s"] > 0 and r["images_per_s_per_worker"] == r["images_per_s"] for r in out["results"])
    urls = benchmark.write_shards(tmp_path, 4, 1, (64, 48))  # given shards (img2dataset layout)
    benchmark.main([*bench, f"bench.urls={urls[0]}", "bench.resolutions=[16]"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["shards"] == "bench.urls" and out["results"][0]["images_per_s"] > 0


def test_benchmark_reports_mfu_and_compares_variants(capsys):
    import benchmark

    bench = ["bench.batch_size=2", "bench.steps=1", "bench.warmup=1", "bench.repeats=1"]
    benchmark.main([*TINY, *bench, "bench.compare=[channels_last+attention=math+bf16]"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["flops_per_image"] > 0 and out["achieved_tflops"] > 0 and out["text_len"] > 0
    assert out["peak_tflops"] is None and out["mfu"] is None  # a CPU: no peak in the table
    assert set(out["compare"]) == {"baseline", "channels_last+attention=math+bf16"}
    variant = out["compare"]["channels_last+attention=math+bf16"]
    assert variant["channels_last"] and variant["attention"] == "math" and not variant["compile"]
    assert variant["precision"] == "bf16" and out["compare"]["baseline"]["precision"] == "fp32"
    assert "error" not in variant and variant["images_per_s"] > 0  # the bf16 autocast step ran
    assert out["compare"]["baseline"]["ratio"] == 1.0
    with pytest.raises(SystemExit):
        benchmark.main([*TINY, *bench, "bench.compare=[fast]"])
    assert "unknown switch 'fast'" in capsys.readouterr().err


def test_device_check_script_parses():
    script = ROOT / "scripts" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
