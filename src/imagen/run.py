"""One training job: config -> objects -> fit -> final sample grid. Returns the final training loss."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imagen.build import build_datamodule, build_module, build_trainer, check_config, check_resume

log = logging.getLogger(__name__)


def hydra_choices() -> dict[str, str]:
    """The Hydra group choices of this job (encoder=minilm, cond=cross_attn, ...), for tags and names."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/") and v is not None}


def run(cfg: DictConfig) -> float | None:
    run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.run_dir
    try:
        check_config(cfg)
        check_resume(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        module = build_module(cfg)
        datamodule = build_datamodule(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        # Bad input: one line naming the problem, before any compute.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    choices = hydra_choices()
    loggers = instantiate(cfg.logger, save_dir=run_dir, tags=[f"{k}={v}" for k, v in sorted(choices.items())])
    for logger in loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "choices": choices,
                                "unet_parameters": sum(p.numel() for p in module.unet.parameters())})
    trainer = build_trainer(cfg, run_dir, loggers)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    finally:
        _finish_wandb()
    loss = trainer.callback_metrics.get("train/loss")
    log.info("trained %d steps in %.1f s; run directory %s", trainer.global_step, time.perf_counter() - start, run_dir)
    return None if loss is None else float(loss)


def run_script(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> Any:
    """job(cfg, this Hydra job's run directory) for the scripts (sample, evaluate): bad input (a ValueError or
    OSError raised before or during the job) is one `error: ...` line and exit status 2, not a traceback."""
    try:
        return job(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _finish_wandb() -> None:
    """Close this job's W&B run, so the jobs of a multirun never log into one run."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
