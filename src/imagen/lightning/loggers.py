"""Experiment loggers: W&B (offline automatically without a key, never blocking) with a CSV fallback.

One function per `conf/logger/*.yaml` option; each returns the list of Lightning loggers of a run.
A CSVLogger always writes `metrics.csv` into the run directory, so runs can be compared offline.
"""

from __future__ import annotations

import json
import netrc
import os
import warnings
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger, Logger


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str | None = None) -> str:
    """The explicit mode, else WANDB_MODE, else "online" with an API key and "offline" without one."""
    return requested or os.environ.get("WANDB_MODE") or ("online" if _wandb_key_available() else "offline")


def csv_logger(save_dir: str, name: str = "", **_) -> list[Logger]:
    return [CSVLogger(save_dir=save_dir, name=name, version="")]


def wandb_logger(save_dir: str, project: str, name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, mode: str | None = None, job_type: str = "train",
                 init_timeout: float = 60.0, **_) -> list[Logger]:
    """W&B plus CSV; if wandb cannot start, CSV alone with a warning (the run goes on)."""
    loggers = csv_logger(save_dir)
    try:
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        def make(run_mode: str) -> WandbLogger:
            logger = WandbLogger(
                save_dir=save_dir, project=project, name=name, group=group, tags=list(tags or []),
                job_type=job_type, mode=run_mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True))
            run = logger.experiment  # start the run now (rank 0), so a dead server is found before training
            if getattr(run, "id", None):  # rank 0: a line per W&B run in the folder, for tests and compare_runs
                with open(Path(save_dir) / "wandb_runs.jsonl", "a") as f:
                    f.write(json.dumps({"id": run.id, "name": name, "group": group, "job_type": job_type, "project": project,
                                        "mode": run_mode, "tags": list(tags or [])}) + "\n")
            return logger

        run_mode = wandb_mode(mode)
        try:
            loggers.append(make(run_mode))
        except Exception as err:
            if run_mode != "online":
                raise
            warnings.warn(f"W&B online run could not start ({err}); continuing with an offline W&B run")
            loggers.append(make("offline"))
    except Exception as err:  # a logging failure must never cost the run
        warnings.warn(f"W&B logger unavailable ({err}); logging to CSV in {Path(save_dir)} only")
    return loggers


def no_logger(**_) -> list[Logger]:
    return []
