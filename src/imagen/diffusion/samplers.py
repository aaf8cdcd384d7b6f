"""Samplers on the continuous-time schedule (Imagen App. A). Every sampler has the same signature:

    sampler(denoiser, schedule, z_1 (B, C, H, W), generator) -> x_0 (B, C, H, W)

and walks a uniform time grid 1 = t_N > ... > t_0 = 0 with `steps` network evaluations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import LogSNRSchedule


def _time_grid(steps: int, device) -> Tensor:
    if steps < 1:
        raise ValueError(f"sampler.steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


class AncestralSampler:
    """Ancestral sampling with the stochasticity interpolation of App. A.

    For s < t: z_s = mu_{s|t} + sqrt(var) noise, with
      mu_{s|t} = e^{lambda_t - lambda_s} (alpha_s / alpha_t) z_t + (1 - e^{lambda_t - lambda_s}) alpha_s x0_hat,
      var = (sigma~^2_{s|t})^{1 - gamma} (sigma^2_{t|s})^gamma,
      sigma~^2_{s|t} = (1 - e^{lambda_t - lambda_s}) sigma_s^2,  sigma^2_{t|s} = (1 - e^{lambda_t - lambda_s}) sigma_t^2.
    gamma = 0 is the true posterior variance (DDPM); gamma = 1 its upper bound.
    """

    def __init__(self, steps: int = 256, gamma: float = 0.0, progress: bool = False):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"sampler.gamma must be in [0, 1], got {gamma}")
        self.steps, self.gamma, self.progress = steps, gamma, progress

    @torch.no_grad()
    def __call__(
        self, denoiser, schedule: LogSNRSchedule, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        ts = _time_grid(self.steps, z.device)
        x0 = z
        for i in _progress(range(self.steps), self.progress, "ancestral"):
            t, s = ts[i], ts[i + 1]
            x0, _ = denoiser(z, t.item())
            if i == self.steps - 1:  # s = 0: return the final x0 prediction
                break
            lam_t, lam_s = schedule.logsnr(t), schedule.logsnr(s)
            (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
            r = torch.exp(lam_t - lam_s)  # e^{lambda_t - lambda_s} < 1
            mean = r * (alpha_s / alpha_t) * z + (1 - r) * alpha_s * x0
            var = ((1 - r) * sigma_s**2) ** (1 - self.gamma) * ((1 - r) * sigma_t**2) ** self.gamma
            noise = torch.randn(z.shape, device=z.device, generator=generator, dtype=z.dtype)
            z = mean + var.sqrt() * noise
        return x0


class DDIMSampler:
    """Deterministic DDIM (Song et al., 2021): z_s = alpha_s x0_hat + sigma_s eps_hat."""

    def __init__(self, steps: int = 50, progress: bool = False):
        self.steps, self.progress = steps, progress

    @torch.no_grad()
    def __call__(
        self, denoiser, schedule: LogSNRSchedule, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        ts = _time_grid(self.steps, z.device)
        x0 = z
        for i in _progress(range(self.steps), self.progress, "ddim"):
            x0, eps = denoiser(z, ts[i].item())
            alpha_s, sigma_s = schedule.alpha_sigma(ts[i + 1])
            z = alpha_s * x0 + sigma_s * eps
        return x0
