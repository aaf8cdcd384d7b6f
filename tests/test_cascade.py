"""The cascade (§2.4): noise conditioning augmentation, SR stages (whole images and crops), the text
cross-attention block, cascaded sampling through sample.py / evaluate.py, experiment configs, the U-Net comparison.

Two tiny checkpoints are trained per module (a 16 px base model and a 16 -> 32 SR stage, 2 steps each)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from test_eval import eval_cfg

from imagen.build import build_module
from imagen.cascade.cascade import Cascade, StageSettings, check_chain
from imagen.cascade.noise_augmentation import GaussianAugmentation, NoAugmentation
from imagen.cascade.stage import Base, SuperResolution, downsample, upsample
from imagen.checkpoint import load_model
from imagen.diffusion.schedule import CosineSchedule
from imagen.models.attention import CrossAttentionBlock
from imagen.run import run

from conftest import ROOT, compose_cfg, tiny_overrides

sys.path.insert(0, str(ROOT / "scripts"))
import evaluate as evaluate_script  # noqa: E402

ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}


def sr_overrides(tmp: Path, image_size: int = 32, low: int = 16, steps: int = 2, extra: tuple = ()) -> list[str]:
    """tiny_overrides for a super-resolution stage (the SR U-Net's own layout, not the base one's)."""
    base = [o for o in tiny_overrides(tmp, steps=steps) if not o.startswith(("unet.", "image_size="))]
    return base + ["experiment=sr64_tiny", f"image_size={image_size}", f"stage.low_res_size={low}", *extra]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cascade")
    run(compose_cfg(tiny_overrides(tmp / "base", steps=2) + ["prediction=v"]))
    run(compose_cfg(sr_overrides(tmp / "sr")))
    run(compose_cfg(sr_overrides(tmp / "sr_none", extra=("noise_aug=none",))))
    return {k: tmp / k / "run" / "checkpoints" / "last.ckpt" for k in ("base", "sr", "sr_none")}


# ----------------------------------------------------------------------------- noise augmentation (§2.4)


def test_gaussian_augmentation_is_the_forward_process_at_aug_level():
    schedule = CosineSchedule()
    aug = GaussianAugmentation(schedule)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    for level in (0.0, 0.3, 1.0):
        z, a = aug.sample(x, level, torch.Generator().manual_seed(0))
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        alpha, sigma = schedule.alpha_sigma(torch.tensor([level]))
        torch.testing.assert_close(z, alpha * x + sigma * eps)  # z = alpha(a) x + sigma(a) eps
        assert torch.equal(a, torch.full((4,), level))
        assert math.isclose(float(alpha**2 + sigma**2), 1.0, rel_tol=1e-6)  # variance preserving
    assert torch.allclose(aug.sample(x, 0.0)[0], x, atol=1e-3)  # level 0: (nearly) clean
    assert aug.sample(x, 1.0)[0].sub(x).abs().mean() > 0.5  # level 1: the image is gone
    levels = torch.cat([GaussianAugmentation(schedule, max_train_level=0.5).train(x)[1] for _ in range(50)])
    assert levels.min() >= 0 and levels.max() <= 0.5 and levels.std() > 0.1  # U(0, max) per sample
    with pytest.raises(ValueError, match=r"aug_level must be in \[0, 1\]"):
        aug.sample(x, 1.5)
    with pytest.raises(ValueError, match="max_train_level"):
        GaussianAugmentation(schedule, max_train_level=0.0)


def test_no_augmentation_keeps_the_image_and_refuses_other_levels():
    x = torch.randn(2, 3, 4, 4)
    z, a = NoAugmentation().train(x)
    assert torch.equal(z, x) and torch.equal(a, torch.zeros(2))
    with pytest.raises(ValueError, match="noise_aug=none"):
        NoAugmentation().sample(x, 0.2)


# ----------------------------------------------------------------------------- stages


def test_super_resolution_conditions_on_the_upsampled_low_res_image():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    stage = SuperResolution(image_size=16, low_res_size=4, noise_aug=NoAugmentation())
    target, inputs = stage.training_inputs(x)
    assert torch.equal(target, x)
    torch.testing.assert_close(inputs["lowres"], upsample(downsample(x, 4), 16))
    torch.testing.assert_close(downsample(x, 4)[0, 0, 0, 0], x[0, 0, :4, :4].mean())  # area = box filter
    assert stage.unet_kwargs() == {"image_size": 16, "lowres_channels": 3}
    assert Base(16).unet_kwargs() == {"image_size": 16}


def test_crops_take_the_same_window_of_target_and_conditioning():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    stage = SuperResolution(image_size=16, low_res_size=8, crop_size=4)
    target, inputs = stage.training_inputs(x)
    assert target.shape == inputs["lowres"].shape == (6, 3, 4, 4)
    assert stage.unet_kwargs()["image_size"] == 4  # the network trains at the crop size
    full = upsample(downsample(x, 8), 16)
    offsets = set()
    for b in range(6):
        hits = [(i, j) for i in range(13) for j in range(13) if torch.equal(x[b, :, i : i + 4, j : j + 4], target[b])]
        assert len(hits) == 1
        i, j = hits[0]
        torch.testing.assert_close(inputs["lowres"][b], full[b, :, i : i + 4, j : j + 4])
        offsets.add(hits[0])
    assert len(offsets) > 1  # a random window per sample


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: SuperResolution(image_size=16, low_res_size=5), "low_res_size must divide"),
        (lambda: SuperResolution(image_size=16, low_res_size=16), "low_res_size must divide"),
        (lambda: SuperResolution(image_size=16, low_res_size=4, crop_size=6), "multiple of the upsampling factor 4"),
        (lambda: SuperResolution(image_size=16, low_res_size=4, crop_size=32), r"crop_size must be in \(0, 16\]"),
        (lambda: Base(16, noise_aug=GaussianAugmentation(CosineSchedule())), "super-resolution stages only"),
    ],
)
def test_stage_config_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_stage_input_errors():
    sr = SuperResolution(image_size=16, low_res_size=8)
    with pytest.raises(ValueError, match="trains on 16px images"):
        sr.training_inputs(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="needs the stage below's images"):
        sr.sampling_inputs(1, None, 0.0)
    with pytest.raises(ValueError, match=r"upsamples \(B, 3, 8, 8\) images"):
        sr.sampling_inputs(1, torch.zeros(1, 3, 4, 4), 0.0)
    with pytest.raises(ValueError, match="takes no low-resolution images"):
        Base(16).sampling_inputs(1, torch.zeros(1, 3, 4, 4), 0.0)


def test_sr_unet_needs_its_conditioning():
    cfg = compose_cfg(["experiment=sr64_tiny", "image_size=16", "stage.low_res_size=8"])
    unet = build_module(cfg).unet
    x, t, emb, mask = (
        torch.randn(1, 3, 16, 16),
        torch.rand(1),
        torch.randn(1, 4, 384),
        torch.ones(1, 4, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="takes 3 low-resolution channels, got none"):
        unet(x, t, emb, mask, aug_level=torch.zeros(1))
    with pytest.raises(ValueError, match="needs aug_level"):
        unet(x, t, emb, mask, lowres=x)


# ----------------------------------------------------------------------------- cross-attention (App. F.2)


def test_cross_attention_block_attends_to_text_only():
    torch.manual_seed(0)
    block = CrossAttentionBlock(channels=8, head_dim=4, groups=2, context_dim=6).double()
    torch.nn.init.normal_(block.to_out.weight)
    x, tokens = torch.randn(2, 8, 3, 3, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = block(x, tokens, mask)
    assert torch.equal(out[1], x[1])  # the null condition (all masked) leaves the image untouched
    # Closed form for the first prompt: softmax over its 3 valid text tokens, per head.
    q = block.to_q(block.norm(x).flatten(2))[0].T.view(9, 2, 4).transpose(0, 1)  # (h, N, d)
    k, v = (u[0, :3].view(3, 2, 4).transpose(0, 1) for u in block.to_text_kv(tokens).chunk(2, -1))
    att = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v  # (h, N, d)
    expected = x[0] + block.to_out(att.transpose(0, 1).reshape(9, 8).T[None]).view(8, 3, 3)
    torch.testing.assert_close(out[0], expected)
    changed = block(x, tokens.flip(0), mask)
    assert not torch.allclose(changed[0], out[0])  # it does read the text


# ----------------------------------------------------------------------------- training and sampling


def test_crop_trained_stage_samples_four_times_the_crop_size(tmp_path):
    """The 256->1024 recipe at toy scale: train on 16x16 crops of 64x64 images, sample whole 64x64 images."""
    cfg = compose_cfg(sr_overrides(tmp_path, image_size=64, low=16, extra=("stage.crop_size=16",)))
    seen: list[tuple] = []
    module = build_module(cfg)
    module.unet.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    batch = {"image": torch.rand(2, 3, 64, 64) * 2 - 1, "caption": ["a red circle", "two blue squares"]}
    opt = torch.optim.Adam(module.unet.parameters(), 1e-3)
    for _ in range(2):
        loss = module.compute_loss(batch)
        loss.backward(), opt.step(), opt.zero_grad()
    assert seen == [(16, 16), (16, 16)]  # trained on crops
    cfg.sampler.steps = 2
    images = module.sample(
        batch["caption"], sampler=instantiate(cfg.sampler), lowres=downsample(batch["image"], 16), aug_level=0.1
    )
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert seen[-1] == (64, 64)  # sampled on the whole image


@pytest.mark.slow
def test_sr_run_writes_a_lowres_sample_truth_grid(ckpts):
    grid = sorted((ckpts["sr"].parents[1] / "samples").glob("step_*.png"))[-1]
    width, height = Image.open(grid).size
    assert width == 180 + 3 * (32 * 2 + 2)  # label + (low-res | sample | truth), 32 px drawn at scale 2
    assert height == 4 * (32 * 2 + 2)  # a row per image of the first training batch (4)
    module, cfg, _ = load_model(ckpts["sr"], device="cpu")
    assert module.stage.low_res_size == 16 and module.image_size == 32
    assert cfg.noise_aug._target_.endswith("GaussianAugmentation")


def test_cascade_checks_the_chain():
    with pytest.raises(ValueError, match="a cascade starts with a base model"):
        check_chain(["sr", "base"], [16, None], [32, 16])
    with pytest.raises(ValueError, match="upsamples 8px images but base makes 16px"):
        check_chain(["base", "sr"], [None, 8], [16, 32])
    with pytest.raises(ValueError, match="only the first checkpoint"):
        check_chain(["base", "base2"], [None, None], [16, 16])
    with pytest.raises(ValueError, match="one settings entry per stage"):
        Cascade([object()], [])


@pytest.mark.slow
def test_cascade_matches_stage_by_stage_sampling(ckpts):
    base, _, _ = load_model(ckpts["base"], device="cpu")
    sr, cfg, _ = load_model(ckpts["sr"], device="cpu")
    cfg.sampler.steps = 2
    sampler = instantiate(cfg.sampler)
    cascade = Cascade([base, sr], [StageSettings(2.0, sampler), StageSettings(3.0, sampler, aug_level=0.2)])
    low, high = cascade.sample(["a red circle"], seed=5)
    assert low.shape == (1, 3, 16, 16) and high.shape == (1, 3, 32, 32)
    torch.testing.assert_close(low, base.sample(["a red circle"], 2.0, sampler, seed=5))
    torch.testing.assert_close(
        high, sr.sample(["a red circle"], 3.0, sampler, seed=5 + 7919, lowres=low, aug_level=0.2)
    )
    # The low-res input matters.
    other = sr.sample(["a red circle"], 3.0, sampler, seed=5 + 7919, lowres=-low, aug_level=0.2)
    assert not torch.allclose(high, other)


def sample_cmd(ckpts, tmp_path, *args) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "scripts" / "sample.py"),
        f"ckpt=[{ckpts['base']},{ckpts['sr']}]",
        "prompt=[a red circle,two blue squares]",
        "n=2",
        "steps=2",
        "device=cpu",
        *args,
        f"hydra.run.dir={tmp_path}",
    ]


@pytest.mark.slow
def test_sample_script_writes_every_resolution_of_a_cascade(ckpts, tmp_path):
    res = subprocess.run(
        sample_cmd(ckpts, tmp_path, "guidance=[2,3]", "aug_level=0.2", "stage_thresholding=[dynamic,static]"),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for res_px in (16, 32):
        files = sorted((tmp_path / "images" / f"{res_px}px").glob("*.png"))
        assert len(files) == 4 and Image.open(files[0]).size == (res_px, res_px)
        assert (tmp_path / f"grid_{res_px}px.png").is_file()
    meta = Image.open(sorted((tmp_path / "images" / "32px").glob("*.png"))[0]).info
    assert meta["guidance"] == "[2.0, 3.0]" and meta["aug_level"] == "[0.2]" and meta["resolution"] == "32"
    assert meta["thresholding"] == "['DynamicThresholding', 'StaticThresholding']"
    # A row per prompt: each of its 2 samples at both resolutions.
    assert Image.open(tmp_path / "cascade.png").size == (180 + 2 * 2 * (32 * 2 + 2), 2 * (32 * 2 + 2))


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["guidance=[1,2,3]"], "guidance has 3 values for 2 stages"),
        (["aug_level=[0.1,0.2]"], "aug_level has 2 values for 1 super-resolution stage"),
        (["aug_level=1.5"], r"aug_level must be in \[0, 1\]"),
        (
            ["stage_thresholding=[dynamic,nope]"],
            "unknown thresholding 'nope' in stage_thresholding; valid: \\['dynamic', 'none', 'static'\\]",
        ),
    ],
)
def test_cascade_sample_bad_input_is_one_line(ckpts, tmp_path, args, message):
    res = subprocess.run(sample_cmd(ckpts, tmp_path, *args), capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr[-1500:]
    import re

    assert re.search(message, lines[0]), lines[0]


@pytest.mark.slow
def test_cascade_order_and_aug_level_errors(ckpts, tmp_path):
    reversed_order = [
        a if not a.startswith("ckpt=") else f"ckpt=[{ckpts['sr']},{ckpts['base']}]" for a in sample_cmd(ckpts, tmp_path)
    ]
    res = subprocess.run(reversed_order, capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 2 and "a cascade starts with a base model" in res.stderr
    no_aug = [
        a if not a.startswith("ckpt=") else f"ckpt=[{ckpts['base']},{ckpts['sr_none']}]"
        for a in sample_cmd(ckpts, tmp_path, "aug_level=0.3")
    ]
    res = subprocess.run(no_aug, capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 2 and "trained with noise_aug=none" in res.stderr


@pytest.mark.slow
def test_evaluate_a_cascade_at_its_final_resolution(ckpts, tmp_path):
    overrides = [
        f"ckpt=[{ckpts['base']},{ckpts['sr']}]",
        "cascade_guidance=1.5",
        "guidance=[1,3]",
        "aug_level=0.2",
        "steps=2",
        "eval.n_per_category=1",
        "eval.n_reference_per_category=2",
        "grid_per_category=1",
        "logger=csv",
        "device=cpu",
        "batch_size=8",
    ]
    metrics = evaluate_script.evaluate(eval_cfg(overrides), tmp_path)
    assert [r["guidance"] for r in metrics["results"]] == [1.0, 3.0]
    assert metrics["cascade"]["resolutions"] == [16, 32] and metrics["cascade"]["aug_level"] == [0.2]
    assert {"fid", "judge/accuracy", "saturated"} <= set(metrics["cascade"]["lower_upsampled"])  # the baseline
    assert all(r["n_samples"] == 4 and "fid" in r and "judge/accuracy" in r for r in metrics["results"])
    assert (tmp_path / "grids" / "16px.png").is_file() and (tmp_path / "grids" / "w3.png").is_file()
    assert Image.open(tmp_path / "grids" / "w3.png").size[1] == 4 * (32 * 2 + 2)  # scored at 32 px
    assert json.loads((tmp_path / "metrics.json").read_text())["cascade"]["guidance"] == [1.5]
    with pytest.raises(ValueError, match="a cascade needs cascade_guidance"):
        evaluate_script.evaluate(eval_cfg([o for o in overrides if not o.startswith("cascade_guidance")]), tmp_path)


# ----------------------------------------------------------------------------- experiments and benchmark


EXPERIMENTS = ["sr64_tiny", "sr128_crops_tiny"]  # the single-stage experiments; the ablations: test_lab.py


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_stage_experiments_compose_and_train_a_step(name):
    cfg = compose_cfg([f"experiment={name}"])
    assert cfg.stage._target_.startswith("imagen.cascade.stage.")
    small = compose_cfg(
        [f"experiment={name}", "image_size=32", f"stage.low_res_size={cfg.stage.get('low_res_size') and 16}"]
        + (["stage.crop_size=16"] if cfg.stage.get("crop_size") else [])
    )
    module = build_module(small)
    loss = module.compute_loss(
        {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a red circle", "a blue square"]}
    )
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_compare_unets_reports_ratios():
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "compare_unets.py"),
        "unets=sr_tiny,sr_tiny_standard",
        "repeats=1",
        "--",
        "experiment=sr64_tiny",
        "image_size=32",
        "stage.low_res_size=16",
        "bench.batch_size=2",
        "bench.steps=1",
        "bench.warmup=1",
        "sampler.steps=2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])["summary"]
    ratios = summary["sr_tiny_standard_vs_sr_tiny"]
    assert set(ratios) == {"train_time_ratio", "sample_time_ratio", "train_memory_ratio", "sample_memory_ratio"}
    assert all(v is not None and v > 0 for v in ratios.values())
    assert summary["sr_tiny"]["parameters"] != summary["sr_tiny_standard"]["parameters"]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_unets.py"), "unets=sr_tiny"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert bad.returncode == 2 and "at least two" in bad.stderr


@pytest.mark.parametrize(
    "overrides,size,crop",
    [
        (["stage=sr256", "unet=sr256_600m", "noise_aug=gaussian"], 256, 256),
        (["stage=sr1024", "unet=sr1024_400m", "noise_aug=gaussian", "schedule=linear"], 1024, 256),
        (["stage=base64", "unet=base_300m"], 64, 64),
    ],
)
def test_paper_stages_compose_and_build(overrides, size, crop):
    """The issue's paper-scale commands: config and network (on the meta device: no memory, no compute)."""
    from imagen.build import build_stage, build_unet

    cfg = compose_cfg(overrides)
    stage = build_stage(cfg)
    assert cfg.image_size == size and stage.unet_kwargs()["image_size"] == crop
    with torch.device("meta"):
        unet = build_unet(cfg, text_dim=4096, stage=stage)
    assert unet.input_conv.in_channels == (3 if size == 64 else 6)
    assert (unet.aug_embed is None) == (size == 64)
