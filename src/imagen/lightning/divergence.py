"""A training run whose loss blows up and stays up fails, instead of finishing as "completed".

At the tiny twin's learning rate one seed in six of `conditioning_tiny` diverged: its loss jumped from 0.06 to
0.6 at step ~1,600 and never came back, yet the job finished, was evaluated and reported as a result (issue 14).
Lightning's EarlyStopping only compares a metric with absolute thresholds; a divergence is relative to the run's own
best loss, which no threshold set before training knows. Hand-written for that reason.

The guard keeps an exponential moving average of the training loss (a tensor: no device sync per step) and, every
``check_every`` steps, averages it over the ranks (every rank then takes the same decision). From ``start_step`` on
it tracks the best smoothed loss; when the smoothed loss stays above ``factor`` x that best for ``patience`` steps it
raises :class:`TrainingDiverged`, which the job records as failed (job.json names the step and the losses; the sweep
goes on). Its state is saved in checkpoints, so a run resumed after its divergence fails again rather than resuming
as healthy.

Calibration on the 8 recipe runs of conditioning_tiny (loss every 25 steps, 10-point average): healthy runs never
rose above 1.4x their best, the diverged one sat at 7.7x.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch


class TrainingDiverged(RuntimeError):
    """The smoothed training loss stayed far above its best: the run is not a result."""


class DivergenceGuard(pl.Callback):
    """Fails a run whose smoothed training loss stays above ``factor`` x its best for ``patience`` steps."""

    def __init__(
        self,
        factor: float = 3.0,
        patience: int = 200,
        start_step: int = 500,
        smoothing: float = 0.02,
        check_every: int = 25,
    ):
        if not factor > 1.0:
            raise ValueError(f"callbacks.divergence.factor must be > 1, got {factor!r}")
        for name, value, least in (
            ("patience", patience, 0),
            ("start_step", start_step, 0),
            ("check_every", check_every, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"callbacks.divergence.{name} must be an integer >= {least}, got {value!r}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"callbacks.divergence.smoothing must be in (0, 1], got {smoothing!r}")
        self.factor, self.patience, self.start_step = float(factor), patience, start_step
        self.smoothing, self.check_every = float(smoothing), check_every
        self._ema: torch.Tensor | None = None  # smoothed loss of this rank, on the loss's device
        self.best = math.inf  # best smoothed loss (mean over ranks) from start_step on
        self.above_since: int | None = None  # first checked step of the current stretch above factor x best

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float()
        if self._ema is None:
            self._ema = loss.clone()
        else:  # after a resume the restored average is on the CPU
            self._ema = self._ema.to(loss.device).lerp(loss, self.smoothing)
        step = trainer.global_step
        if step % self.check_every:
            return
        smoothed = float(trainer.strategy.reduce(self._ema.clone(), reduce_op="mean"))
        if step < self.start_step:
            return
        self.best = min(self.best, smoothed)
        if smoothed <= self.factor * self.best:
            self.above_since = None
            return
        if self.above_since is None:
            self.above_since = step
        if step - self.above_since >= self.patience:
            raise TrainingDiverged(
                f"training diverged: the smoothed loss {smoothed:.3g} has stayed above {self.factor:g} x its best "
                f"{self.best:.3g} since step {self.above_since} (now step {step}); lower optim.lr or change the "
                "seed, or drop the check with ~callbacks.divergence"
            )

    def state_dict(self) -> dict[str, Any]:
        ema = None if self._ema is None else float(self._ema)
        return {"ema": ema, "best": self.best, "above_since": self.above_since}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("ema")
        self._ema = None if ema is None else torch.tensor(ema)
        self.best = float(state_dict.get("best", math.inf))
        self.above_since = state_dict.get("above_since")
