"""Lightning callbacks of the lab: the sample grid of held-out prompts written at every validation, and the
EMA of the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar, WeightAveraging
from pytorch_lightning.utilities import rank_zero_only

from .checkpoint_io import AtomicCheckpointIO
from .grid import caption_grid, save_png


class SampleGrid(pl.Callback):
    """Collects the validation samples (drawn with the EMA weights) and writes `samples/step_XXXXXX.png`
    in the run directory, and logs it to every logger that can show images (W&B).

    With ``at_end`` (the default) the last training step also validates, so a run whose ``max_steps`` is not a
    multiple of ``val_check_interval`` still ends with the grid of its final (EMA) weights: on that step the
    callback sets ``trainer.should_stop``, which makes the fit loop run validation after the step (as it does for
    early stopping and the Timer callback). A last step that validates anyway validates once."""

    def __init__(self, out_dir: str, per_row: int, at_end: bool = True):
        self.out_dir, self.per_row, self._per_row = Path(out_dir), per_row, per_row
        self.at_end = at_end
        self._images: list[torch.Tensor] = []
        self._captions: list[str] = []
        self.last_path: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        # Every rank: validation is a collective under DDP, and all ranks reach max_steps at the same batch.
        if self.at_end and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._images, self._captions, self._per_row = [], [], self.per_row

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        self._images.append(outputs["images"])
        self._captions.extend(outputs["captions"])
        self._per_row = outputs.get("per_row", self.per_row)  # SR stages: low-res | sample | truth

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._captions or trainer.sanity_checking:
            return
        grid = caption_grid(torch.cat(self._images), self._captions, self._per_row)
        meta = {
            "step": trainer.global_step,
            "guidance_weight": pl_module.guidance_weight,
            "sampler": type(pl_module.sampler).__name__,
            "thresholding": type(pl_module.thresholding).__name__,
        }
        self.last_path = save_png(grid, self.out_dir / f"step_{trainer.global_step:06d}.png", meta)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples/grid", images=[grid], step=trainer.global_step)


class LogRunConfig(pl.Callback):
    """Logs the run's resolved config to every logger when fitting starts, in the process that logs (rank 0 of the
    spawned workers under ddp_spawn, the main process otherwise), and records a W&B run started or attached there."""

    def __init__(self, hparams: dict[str, Any], save_dir: str):
        self.hparams, self.save_dir = hparams, save_dir

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        from .loggers import record_wandb_run

        for logger in trainer.loggers:
            logger.log_hyperparams(self.hparams)
            record_wandb_run(logger, self.save_dir)  # once per run id


class ExponentialAverage:
    """ema <- decay * ema + (1 - decay) * current; a class, so that it pickles (torch's is a closure)."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        return averaged.lerp(current, 1.0 - self.decay)


class EMA(WeightAveraging):
    """An exponential moving average of the weights: Lightning's weight averaging with a picklable averaging
    function (:class:`ExponentialAverage`), so it survives `ddp_spawn`.

    The average starts as a copy of the weights after the optimizer step of index `start_step` (0-based, i.e. at
    `global_step == start_step + 1`; not a copy of the random initialisation) and is then updated after every
    step, like ``EMAWeightAveraging(update_starting_at_step=start_step)``. Validation swaps the average in, and
    checkpoints hold it as their ``state_dict`` (the raw weights as ``current_model_state``)."""

    def __init__(self, decay: float, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        super().__init__(avg_fn=ExponentialAverage(decay))
        self.decay, self.start_step = decay, start_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimizer step from `start_step` on (the first update copies the weights); never at an
        epoch end."""
        return step_idx is not None and step_idx >= self.start_step


class Checkpoints(ModelCheckpoint):
    """Lightning's ModelCheckpoint as the lab uses it: `step_XXXXXXX.ckpt` every `every_n_train_steps`, all kept,
    `last.ckpt`, and a checkpoint of the final step (and of any epoch's end) even when max_steps is not a multiple of
    the interval (Lightning skips it then), so a finished run's `last.ckpt` is its final model. Files are written atomically
    (:class:`~imagen.lightning.checkpoint_io.AtomicCheckpointIO`): a kill never leaves a truncated checkpoint."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 500):
        if every_n_train_steps < 1:
            raise ValueError(f"callbacks.model_checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=-1,
            every_n_train_steps=every_n_train_steps,
            filename="step_{step:07d}",
            auto_insert_metric_name=False,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: make it atomic
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final step's checkpoint is written here (the training stream is one endless epoch, which ends when
        training does), not in `on_train_end`: there weight averaging (the EMA) has already copied the average into
        the module, and the checkpoint's raw weights (`current_model_state`) would be the average."""
        super().on_train_epoch_end(trainer, pl_module)
        final = Path(self.dirpath) / f"step_{trainer.global_step:07d}.ckpt"
        # Rank 0 decides for all: save_checkpoint is collective (rank 0 writes, every rank meets at a barrier).
        if trainer.strategy.broadcast(bool(trainer.global_step) and not final.is_file()):
            trainer.save_checkpoint(final)
            trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt")


def batch_size(batch: dict) -> int:
    """Samples in a batch, for ThroughputMonitor (a named function: ddp_spawn pickles the callbacks)."""
    return len(batch["caption"])


class StepSeed(pl.Callback):
    """Seeds torch's generators before every training batch from (seed, rank, step, micro-batch): the random draws of
    a step (t, the noise, the CFG text drop, dropout) depend on where training is, not on what ran before, so a run
    resumed from a checkpoint draws exactly what the interrupted run would have, although the validation, a new
    dataloader iterator or the sanity check in between (all draw from the global generator) differ. Each rank draws
    its own numbers. A seed schedule rather than saved generator states: nothing to gather from the ranks and
    nothing to restore at the right moment."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        micro = batch_idx % max(int(trainer.accumulate_grad_batches), 1)
        entropy = [self.seed, trainer.global_rank, trainer.global_step, micro]
        torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting training steps toward `max_steps`: the training stream is one endless epoch
    (imagen.data.pipeline), for which Lightning's default bar shows "Epoch 0/-2" and no total. A resumed run's bar
    starts at the step it resumes from."""

    @property
    def total_train_batches(self) -> int | float:
        steps = self.trainer.max_steps
        return steps if steps > 0 else super().total_train_batches

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        self._count_steps(trainer)  # a resumed run restarts mid-epoch: Lightning calls no on_train_epoch_start then

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._count_steps(trainer)

    def _count_steps(self, trainer: pl.Trainer) -> None:
        bar = self.train_progress_bar
        total = self.total_train_batches
        bar.total = None if total == float("inf") else total  # tqdm's "no total"
        bar.n = bar.initial = trainer.global_step  # tqdm's rate counts from `initial`: this run's steps per second
        bar.set_description("train steps")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)
