"""Learning-rate schedules (§4.1, App. F: 10k linear warm-up steps): a multiplier of the peak rate per step, for
torch's LambdaLR. Classes, not closures, so that ddp_spawn can pickle them."""

from __future__ import annotations

import math


class WarmupCosine:
    """Linear warm-up over `warmup_steps`, then cosine decay to `final_lr_fraction` of the peak at `total_steps`."""

    def __init__(self, warmup_steps: int = 10_000, total_steps: int = 2_500_000, final_lr_fraction: float = 0.0):
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(
                f"optim.lr_schedule: warmup_steps must be >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}"
            )
        if not 0.0 <= final_lr_fraction <= 1.0:
            raise ValueError(f"optim.lr_schedule.final_lr_fraction must be in [0, 1], got {final_lr_fraction}")
        self.warmup_steps, self.total_steps, self.final_lr_fraction = warmup_steps, total_steps, final_lr_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_lr_fraction + (1 - self.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
