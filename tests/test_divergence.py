"""The divergence guard (imagen.lightning.divergence) inside a real Lightning fit: a loss that blows up and stays up
fails the run, a noisy or briefly spiking healthy loss does not, and a resumed run keeps the guard's state."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from imagen.lightning.divergence import DivergenceGuard, TrainingDiverged

from conftest import compose_cfg


class ScriptedLoss(pl.LightningModule):
    """Its training loss at step s is `losses(s)` (with a zero-valued gradient path, so the optimizer steps)."""

    def __init__(self, losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.losses = losses

    def training_step(self, batch, batch_idx):
        return self.w.sum() * 0.0 + float(self.losses(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(range(10_000), batch_size=1)


def fit(losses, guard: DivergenceGuard, max_steps: int = 300, ckpt_path=None) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        callbacks=[guard],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ScriptedLoss(losses), ckpt_path=ckpt_path)
    return trainer


def small_guard(**overrides) -> DivergenceGuard:
    return DivergenceGuard(
        **{"factor": 3.0, "patience": 40, "start_step": 20, "check_every": 5, "smoothing": 0.1, **overrides}
    )


def noisy_decay(step: int) -> float:
    """A healthy loss: falling, with single-batch noise up to 3x (what the recipe's logged loss shows)."""
    return (0.05 + 0.5 * math.exp(-step / 30)) * (3.0 if step % 7 == 0 else 1.0)


def test_a_loss_that_blows_up_and_stays_up_fails_the_run_and_names_the_step():
    guard = small_guard()
    with pytest.raises(TrainingDiverged, match=r"stayed above 3 x its best .* since step (1[0-9]{2}) .*optim\.lr"):
        fit(lambda s: noisy_decay(s) if s < 120 else 0.6, guard)
    assert 120 <= guard.above_since <= 160  # the smoothed loss crosses 3 x best a few steps after the jump


def test_a_healthy_noisy_loss_and_a_short_spike_do_not_fail():
    fit(noisy_decay, small_guard())
    spike = small_guard(patience=80)
    fit(lambda s: 5.0 if 100 <= s < 120 else noisy_decay(s), spike)  # 20 steps at 50x: smoothed above ~50 steps
    assert spike.above_since is None  # it recovered


def test_nothing_is_judged_before_start_step():
    guard = small_guard(start_step=250)
    fit(lambda s: 10.0 if s < 100 else 0.1, guard)  # a high early loss is not a best to diverge from
    assert guard.best < 0.2


def test_a_run_resumed_from_a_checkpoint_after_its_divergence_fails_again(tmp_path):
    def losses(s):
        return noisy_decay(s) if s < 120 else 0.6

    first = small_guard(patience=1000)  # does not fire before the checkpoint
    trainer = fit(losses, first, max_steps=150)
    assert first.above_since is not None
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = small_guard(patience=1000)
    with pytest.raises(TrainingDiverged, match=f"since step {first.above_since} "):
        fit(losses, resumed, max_steps=1200, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.above_since == first.above_since  # the stretch before the resume counted


@pytest.mark.parametrize(
    "bad", [{"factor": 1.0}, {"patience": -1}, {"check_every": 0}, {"smoothing": 0.0}, {"start_step": 1.5}]
)
def test_bad_settings_are_one_line_errors_naming_the_key(bad):
    with pytest.raises(ValueError, match=rf"callbacks\.divergence\.{next(iter(bad))}"):
        DivergenceGuard(**bad)


def test_the_default_callbacks_include_the_guard():
    cfg = compose_cfg([])
    assert isinstance(instantiate(cfg.callbacks.divergence), DivergenceGuard)
