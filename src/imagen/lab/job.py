"""One job of an ablation sweep, made safe to run inside a Hydra multirun, under DDP and on SLURM.

The record `<run_dir>/job.json` is what makes a sweep correct and restartable:

- it is written by global rank 0 only (under SLURM every task runs the job function; Lightning's loggers are
  rank-0 only too), so a DDP job leaves one record, one checkpoint folder, one `metrics.csv` and one W&B run;
- `status` is `running`, then `completed` (training and the final evaluation done), `failed` with the error, or
  `interrupted` (a signal: a SLURM requeue or preemption; the process ends and the next run resumes);
  a re-run of the same sweep command (same folders: `multirun/<ablation>/<overrides>`) skips completed jobs,
  and a failed or interrupted one resumes from its `checkpoints/last.ckpt` (also what a SLURM requeue does);
- a failing job (out of memory, a non-finite loss, a bad config) is recorded and the sweep goes on;
- each job restores the distributed variables (MASTER_PORT, RANK, ...) it started with, so those set by one
  job never leak into the next job of the same process;
- a job runs in one process at a time: rank 0 holds `<run_dir>/.job.lock` (an OS file lock, released when the
  process ends, even by a kill) while the job runs, so the same sweep launched twice, or from two shells with
  overlapping jobs, never writes two runs into one folder: the second process is refused that job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

RECORD = "job.json"
LOCK = ".job.lock"


class JobBusy(RuntimeError):
    """The job's folder is locked by another running process."""


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 outside distributed runs). Read at call
    time: SLURM sets SLURM_PROCID for every task before Python starts; torchrun sets RANK.
    Not Lightning's helpers: the public `rank_zero_only.rank` is fixed at import (then set by a Trainer), not
    read per job, and the call-time `lightning_fabric.utilities.rank_zero._get_rank` is private and puts
    LOCAL_RANK (a per-node rank) before SLURM_PROCID."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


@contextmanager
def exclusive(run_dir: str | Path) -> Iterator[None]:
    """Hold `<run_dir>/.job.lock` (global rank 0; the other ranks belong to the same job) for the job's duration;
    JobBusy at once, naming the folder, when another process holds it."""
    if global_rank() != 0:
        yield
        return
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise JobBusy(
            f"job {run_dir} is already running in another process (it holds {path}): it is not run twice; wait for "
            "it, or stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # a record cut by a crash mid-write counts as an interrupted job
        return {"status": "interrupted"}


class JobRecord:
    """`<run_dir>/job.json`: what ran, how it ended, how long it took. A no-op on ranks other than 0."""

    def __init__(self, run_dir: str | Path, **fields: Any):
        self.path = Path(run_dir) / RECORD
        self.enabled = global_rank() == 0
        previous = read_record(run_dir) or {}
        self.data: dict[str, Any] = {**previous, **fields, "attempts": previous.get("attempts", 0) + 1}
        self.data.setdefault("evals", {})

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.path)  # atomic: a reader never sees half a record

    def start(self) -> None:
        self.update(status="running", started=now(), finished=None, error=None)

    def complete(self, **fields: Any) -> None:
        self.update(status="completed", finished=now(), error=None, traceback=None, **fields)

    def fail(self, err: BaseException) -> None:
        tail = traceback.format_exception(type(err), err, err.__traceback__)[-6:]
        self.update(status="failed", finished=now(), error=f"{type(err).__name__}: {err}", traceback="".join(tail))

    def interrupt(self, err: BaseException) -> None:
        """Stopped from outside (a signal, a requeue): resumed by the next run of the job, not a failure."""
        self.update(status="interrupted", finished=now(), error=f"{type(err).__name__}: {err}", traceback=None)


JOB_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    "TORCHELASTIC_RUN_ID",
    "WANDB_DIR",
)


@contextmanager
def isolated_environment(run_dir: str | Path) -> Iterator[None]:
    """Restore the distributed variables (MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE, ...) on exit: a DDP job's must
    not reach the next job of a multirun (a `devices=2,1` sweep crashed on exactly that).
    Only those: others belong to long-lived services of the process (W&B's service address, for one).
    WANDB_DIR is the job's folder meanwhile, so W&B files written by a spawned worker land there too."""
    saved = {k: os.environ.get(k) for k in JOB_ENV}
    os.environ["WANDB_DIR"] = str(run_dir)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _destroy_process_group()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
