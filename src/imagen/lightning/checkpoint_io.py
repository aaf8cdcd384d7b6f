"""Checkpoint files that a kill cannot corrupt, and the newest intact one to resume from.

Lightning writes a checkpoint through fsspec's transaction, whose temporary file lives in the system's temp folder:
when that is another file system the final move is a copy, and a kill during it leaves a truncated `last.ckpt`.
:class:`AtomicCheckpointIO` writes next to the target and renames (atomic within a folder), so a checkpoint path
holds a whole checkpoint or the previous one. For checkpoints written otherwise (by hand, an older version, a full
disk), :func:`resume_checkpoint` skips the unreadable ones, each named in one line.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to `.NAME.PID.tmp` beside `path`, flushed to disk, then renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with :func:`atomic_torch_save` (local paths; loading is unchanged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)


def unreadable(path: str | Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded (one line), or None when it can. The tensors are mapped, not
    read, so this costs little even for a large checkpoint."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated zip, a bad pickle, an unreadable file: all mean "do not resume from it"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def _step(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def resume_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint a job in `folder` resumes from: `last.ckpt` when it loads, else the newest loadable
    `step_*.ckpt`; every unreadable one passed over is logged in one line. None when there is none."""
    folder = Path(folder)
    candidates = [folder / "last.ckpt"] + sorted(folder.glob("step_*.ckpt"), key=_step, reverse=True)
    for path in candidates:
        if not path.is_file():
            continue
        problem = unreadable(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unreadable (%s): passed over for an earlier one", path, problem)
    return None
