"""Experiment loggers: W&B (offline automatically without a key, never blocking) with a CSV fallback.

One function per `conf/logger/*.yaml` option; each returns the list of Lightning loggers of a run.
A CSVLogger always writes `metrics.csv` into the run directory, so runs can be compared offline.
"""

from __future__ import annotations

import json
import netrc
import os
import sys
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


def csv_logger(save_dir: str, **_) -> list[Logger]:
    """metrics.csv directly in the run directory (a run's name and group are W&B's business)."""
    return [CSVLogger(save_dir=save_dir, name="", version="")]


def record_wandb_run(logger: Logger, save_dir: str | Path) -> None:
    """Append the started W&B run (id, name, group, job_type, ...) to `<save_dir>/wandb_runs.jsonl`: one line per
    W&B run of the folder, written by the process that owns the run (rank 0), for tests and compare_runs."""
    run = getattr(logger, "_experiment", None)
    if not getattr(run, "id", None):
        return
    init = getattr(logger, "_wandb_init", {})
    line = {
        "id": run.id,
        **{k: init.get(k) for k in ("name", "group", "job_type", "project", "mode")},
        "tags": list(init.get("tags") or []),
    }
    path = Path(save_dir) / "wandb_runs.jsonl"
    if path.is_file() and any(json.loads(x)["id"] == run.id for x in path.read_text().splitlines()):
        return  # ddp_spawn: the run started in the main process and the worker attached to it
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def wandb_logger(
    save_dir: str,
    project: str,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    job_type: str = "train",
    init_timeout: float = 60.0,
    **_,
) -> list[Logger]:
    """W&B plus CSV; if wandb cannot start, CSV alone with a warning (the run goes on). The run starts here (rank 0),
    so a dead server is found before training and an online run falls back to offline; under ddp_spawn the
    rank-0 worker attaches to it (Lightning's WandbLogger pickling)."""
    loggers = csv_logger(save_dir)
    try:
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        def make(run_mode: str) -> WandbLogger:
            logger = WandbLogger(
                save_dir=save_dir,
                project=project,
                name=name,
                group=group,
                tags=list(tags or []),
                job_type=job_type,
                mode=run_mode,
                settings=wandb.Settings(init_timeout=init_timeout, silent=True),
            )
            _ = logger.experiment  # start the run now (rank 0)
            record_wandb_run(logger, save_dir)
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


def finish_wandb() -> None:
    """Close this job's W&B run, so the jobs of a multirun (and a job's training and evaluation) never log into
    one run: Lightning's WandbLogger reuses a live `wandb.run`."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
