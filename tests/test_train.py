"""End-to-end: the Hydra config composes, a tiny run trains, writes a checkpoint and a grid, and resumes."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from imagen.build import build_module, check_config
from imagen.run import run

from conftest import ROOT, compose_cfg, tiny_overrides


@pytest.mark.slow
def test_cfg_job_composes():
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--cfg", "job"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: imagen.text.encoder.FrozenTextEncoder" in out.stdout and "cond:" in out.stdout


@pytest.mark.slow
def test_unknown_option_lists_valid_ones():
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "cond=nope", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "cross_attn" in out.stderr and "mean_pool" in out.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.optimizer.lr=-1", "optim.optimizer.lr must be > 0"),
        ("p_uncond=1.5", "p_uncond must be in [0, 1]"),
        ("ckpt_path=/nonexistent/last.ckpt", "/nonexistent/last.ckpt"),
    ],
)
def test_bad_values_fail_before_compute(override, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("[", r"\[").replace("]", r"\]")):
        check_config(compose_cfg([override]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("image_size=30", "not divisible"),
        ("unet.attn_resolutions=[5]", "never"),
    ],
)
def test_bad_unet_values_fail_at_build(override, message):
    cfg = compose_cfg([override])
    with pytest.raises(ValueError, match=message):
        build_module(cfg)


def test_train_checkpoint_grid_and_resume(tmp_path, capsys):
    cfg = compose_cfg(tiny_overrides(tmp_path, steps=4))
    loss = run(cfg)
    assert loss is not None and math.isfinite(loss)
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "checkpoints" / "step_0000002.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert (run_dir / "metrics.csv").is_file()

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    # The frozen encoder is never in the checkpoint; the EMA weights are the checkpoint's state_dict.
    assert not any(k.startswith(("text_encoder", "_text_encoder")) for k in state["state_dict"])
    assert any(k.startswith("unet.") for k in state["state_dict"]) and "current_model_state" in state

    # Resume continues the step count.
    cfg2 = compose_cfg(tiny_overrides(tmp_path, steps=6) + [f"ckpt_path={ckpt}"])
    run(cfg2)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 6
    assert (run_dir / "samples" / "step_000006.png").is_file()

    # A resumed checkpoint whose model config differs says which keys differ.
    cfg3 = compose_cfg(tiny_overrides(tmp_path, steps=8) + [f"ckpt_path={ckpt}", "unet.channels=16"])
    with pytest.raises(SystemExit):
        run(cfg3)
    assert "unet.channels: checkpoint 32 vs run 16" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_webdataset_shards(tmp_path):
    """`data=webdataset` reads img2dataset-layout shards through the same pipeline (here: shapes shards)."""
    from imagen.data.shapes import ShapesWorld
    from imagen.data.shards import write_shards

    paths = write_shards(ShapesWorld(resolution=16), tmp_path / "shards", n_samples=24, samples_per_shard=8, seed=1)
    assert len(paths) == 3
    urls = str(tmp_path / "shards" / "shapes-{000000..000002}.tar")
    cfg = compose_cfg(
        ["data=webdataset", f"data.urls='{urls}'", "data.eval_prompts=[a red circle]"]
        + tiny_overrides(tmp_path, steps=2, shapes=False)
    )
    loss = run(cfg)
    assert loss is not None and math.isfinite(loss)
    assert (tmp_path / "run" / "samples" / "step_000002.png").is_file()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    """A real 2-process DDP run (gloo, ddp_spawn): one run directory, one checkpoint, grids from rank 0 only."""
    cfg = compose_cfg(
        tiny_overrides(tmp_path, steps=2)
        + [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.val_check_interval=2",
            "trainer.max_steps=2",
        ]
    )
    run(cfg)
    run_dir = tmp_path / "run"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert [p.name for p in (run_dir / "samples").glob("*.png")] == ["step_000002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_progress_bar_counts_steps_toward_max_steps():
    """The endless training epoch: the bar's total is max_steps and its count the global step (also after a resume)."""
    from types import SimpleNamespace

    from imagen.lightning.callbacks import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=30, max_epochs=-1, num_training_batches=float("inf"))
    assert bar.total_train_batches == 30
    bar._trainer.max_steps = -1
    assert bar.total_train_batches == float("inf")
