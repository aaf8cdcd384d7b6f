"""Shared test set-up: offline hub and W&B, the repository's paths, one Hydra compose helper and fixture, the tiny
run's overrides, and the `slow` marker (subprocess, multirun, DDP and end-to-end training tests beyond
one kept in the fast loop: `pytest -m "not slow"` skips them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from imagen.config import conf_dir  # noqa: E402  (after the environment: importing imagen must not reach the hub)

ROOT = Path(__file__).resolve().parents[1]
CONF = str(conf_dir())


def compose_cfg(overrides: list[str], config_name: str = "config", return_hydra_config: bool = False):
    """conf/<config_name>.yaml composed with the overrides, as train.py or a script would see it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def compose_config():
    """The compose helper as a fixture: `compose_config(["cond=mean_pool"])`."""
    return compose_cfg


def tiny_overrides(tmp_path: Path, steps: int = 4, shapes: bool = True) -> list[str]:
    """A tiny shapes-world run in tmp_path: 64 samples, 16 px, a 2-level U-Net, CSV logging, `steps` steps."""
    data = (
        [
            f"data.root={tmp_path}/data",
            "data.n_train=64",
            "data.samples_per_shard=32",
            "data.gen_procs=1",
            "data.world.n_eval=2",
        ]
        if shapes
        else []
    )
    return data + [
        "image_size=16",
        "unet.channel_mult=[1,2]",
        "unet.attn_resolutions=[8]",
        "logger=csv",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.eval_repeats=2",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "sampler.steps=3",
        "callbacks.ema.start_step=1",
        f"run_dir={tmp_path}/run",
    ]
