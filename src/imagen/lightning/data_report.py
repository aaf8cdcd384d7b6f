"""Bad training data, reported and bounded: the :class:`DataReport` callback and the job record's report.

The training pipeline counts what it reads (:class:`imagen.data.pipeline.SkipCounter`, ``train_pipeline.skipped``:
samples read, skips by reason and by shard, kept samples with a bad meta; shared by the dataloader workers of one
process). The callback turns the counts into

- metrics for every logger (CSV, W&B) every ``every_n_steps`` steps and at the end: ``data/seen``, ``data/skipped``,
  ``data/skipped_fraction``, ``data/skipped/<reason>``, ``data/bad_meta``, ``data/worst_shard_skipped``;
- a log line at every validation and at the end of training, e.g.
  ``data: 3 of 1,204 samples skipped (0.2 %): bad_image 2, missing_caption 1; worst shard /x/00003.tar (2)``;
- the report dict (:func:`data_report`) that the job record stores;
- a one-line ValueError that stops training when more than the datamodule's ``max_bad_fraction`` of the samples
  read is bad, once ``min_samples`` have been read.

The limit is checked here, in the training process, rather than in the pipeline: the DataLoader re-raises a worker's
error wrapped in a multi-line "Caught ValueError in DataLoader worker process 0. Original Traceback ..." message,
a worker sees only its own share of the samples, and under DDP a rank that raised alone would leave the others
waiting in their next collective. The pipeline keeps only its guard against endless consecutive failures.

DDP: every rank counts the shards it reads (its workers share its counter). At each check the callback sums the
ranks' count vectors (``trainer.strategy.reduce(..., "sum")``, the per-shard counts included: in infinite mode a
shard is read by different ranks in different epochs), so every rank holds the same totals, takes the same stop
decision at the same step, and rank 0 logs them. The counts cover this process's training (a resumed run counts from
its resume); samples decoded ahead (prefetch, shuffle buffer) are counted when read, not when trained on.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch

from imagen.data.pipeline import SkipCounter

__all__ = ["REPORT_KEY", "DataReport", "check_bad_fraction", "data_report", "format_report", "report_metrics"]

log = logging.getLogger(__name__)

# The final report's key in `trainer.callback_metrics`: the one channel Lightning carries from ddp_spawn's rank 0
# back to the launching process (LearningRateMonitor also writes there), read by `data_report(trainer)`.
REPORT_KEY = "data/report"


def _percent(fraction: float) -> str:
    pct = 100.0 * fraction
    return f"{pct:.1f} %" if pct == 0 or pct >= 0.1 else f"{pct:.2g} %"


def format_report(report: dict[str, Any]) -> str:
    """The report as one log line: ``data: 3 of 1,204 samples skipped (0.2 %): bad_image 2, missing_caption 1;
    worst shard /x/00003.tar (2)``, plus the kept samples with a bad meta and the number of ranks summed, if any."""
    ranks = report.get("ranks", 1)
    line = f"data{f' ({ranks} ranks)' if ranks > 1 else ''}: {report['skipped']:,} of {report['seen']:,} samples "
    line += f"skipped ({_percent(report['skipped_fraction'])})"
    reasons = [f"{reason} {n:,}" for reason, n in report["by_reason"].items() if n]
    if reasons:
        line += ": " + ", ".join(reasons)
    if report["worst_shards"]:
        worst = report["worst_shards"][0]
        line += f"; worst shard {worst['url']} ({worst['skipped']:,})"
    if report["bad_meta"]:
        line += f"; {report['bad_meta']:,} kept without their unreadable .json meta"
    return line


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as logger metrics (every reason always present: constant CSV columns)."""
    metrics = {
        "data/seen": float(report["seen"]),
        "data/skipped": float(report["skipped"]),
        "data/skipped_fraction": float(report["skipped_fraction"]),
        **{f"data/skipped/{reason}": float(n) for reason, n in report["by_reason"].items()},
        "data/bad_meta": float(report["bad_meta"]),
    }
    metrics["data/worst_shard_skipped"] = float(report["worst_shards"][0]["skipped"] if report["worst_shards"] else 0)
    return metrics


def check_bad_fraction(report: dict[str, Any], max_bad_fraction: float, min_samples: int = 100) -> None:
    """One-line ValueError when more than ``max_bad_fraction`` of the samples read is bad, from ``min_samples`` on
    (a single early bad sample does not stop a tiny run)."""
    if report["seen"] < min_samples or report["skipped_fraction"] <= max_bad_fraction:
        return
    raised = min(1.0, math.floor(report["skipped_fraction"] * 10 + 1) / 10)
    raise ValueError(
        f"more than data.max_bad_fraction={max_bad_fraction:g} of the samples read are bad -- {format_report(report)} "
        f"-- repair or remove that shard, or raise the limit, e.g. data.max_bad_fraction={raised:g} (1: never stop)"
    )


def data_report(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The data report of the training that ``trainer.fit`` just ran (summed over DDP ranks), for the job record:
    ``{"seen", "skipped", "skipped_fraction", "by_reason", "bad_meta", "worst_shards": [{"url", "skipped"}], "ranks",
    "max_bad_fraction"}``; None without a :class:`DataReport` callback or a training that ended. Also right in the
    process that launched ``ddp_spawn``: the report comes back in ``trainer.callback_metrics``."""
    report = trainer.callback_metrics.get(REPORT_KEY)
    return dict(report) if isinstance(report, dict) else None


class DataReport(pl.Callback):
    """Reports the training pipeline's bad-data counts and stops training when there is too much bad data.

    Reads ``trainer.datamodule.train_pipeline.skipped`` and the limit ``trainer.datamodule.max_bad_fraction`` (no
    check without one); does nothing for a datamodule without a counting pipeline.

    Args:
        min_samples: samples (all ranks) to read before the fraction is checked.
        every_n_steps: check and log the metrics every this many training steps; None: ``trainer.log_every_n_steps``.
    """

    def __init__(self, min_samples: int = 100, every_n_steps: int | None = None):
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
            raise ValueError(f"callbacks.data_report.min_samples must be an integer >= 0, got {min_samples!r}")
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(f"callbacks.data_report.every_n_steps must be null or >= 1, got {every_n_steps!r}")
        self.min_samples, self.every_n_steps = min_samples, every_n_steps
        self.report: dict[str, Any] | None = None  # the last one, in this process
        self._checked_step = -1

    @staticmethod
    def _counter(trainer: pl.Trainer) -> SkipCounter | None:
        counter = getattr(getattr(trainer.datamodule, "train_pipeline", None), "skipped", None)
        return counter if isinstance(counter, SkipCounter) else None

    def collect(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """The counts of every rank, summed (a collective under DDP: every rank calls it at the same point)."""
        counter = self._counter(trainer)
        if counter is None:
            return None
        vector = torch.tensor(counter.vector(), dtype=torch.int64, device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            vector = trainer.strategy.reduce(vector, reduce_op="sum")
        report = SkipCounter.summary(vector.tolist(), counter.urls)
        report["ranks"] = trainer.world_size
        report["max_bad_fraction"] = getattr(trainer.datamodule, "max_bad_fraction", None)
        self.report = report
        return report

    @staticmethod
    def _log_metrics(trainer: pl.Trainer, report: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            metrics = report_metrics(report)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checked_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        every = self.every_n_steps or max(1, trainer.log_every_n_steps)
        step = trainer.global_step
        if step == self._checked_step or step % every:  # gradient accumulation: one check per optimizer step
            return
        self._checked_step = step
        report = self.collect(trainer)
        if report is None:
            return
        self._log_metrics(trainer, report)
        if report["max_bad_fraction"] is not None:
            check_bad_fraction(report, report["max_bad_fraction"], self.min_samples)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # only the validations inside training
            return
        report = self.collect(trainer)
        if report is not None and trainer.is_global_zero:
            log.info(format_report(report))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = self.collect(trainer)
        if report is None:
            return
        if trainer.global_step != self._checked_step:  # not logged at this step yet
            self._log_metrics(trainer, report)
        trainer.callback_metrics[REPORT_KEY] = report
        if trainer.is_global_zero:
            limit = report["max_bad_fraction"]
            over = limit is not None and report["skipped_fraction"] > limit
            log.log(logging.WARNING if over else logging.INFO, format_report(report))
