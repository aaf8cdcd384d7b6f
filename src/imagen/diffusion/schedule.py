"""Continuous-time noise schedules of Imagen (Saharia et al., 2022, App. A).

Time t ~ U(0, 1); the forward process is z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1
(variance preserving), and a schedule is fully described by its log signal-to-noise ratio
lambda_t = log(alpha_t^2 / sigma_t^2), strictly decreasing in t. Then alpha_t^2 = sigmoid(lambda_t) and
sigma_t^2 = sigmoid(-lambda_t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class LogSNRSchedule:
    """Interface: a strictly decreasing log-SNR lambda(t) on t in [0, 1]."""

    def logsnr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (App. A)."""
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def q_sample(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The forward process z_t = alpha_t x + sigma_t eps; t is (B,), x and eps (B, C, H, W)."""
        alpha, sigma = (a.view(-1, *([1] * (x.ndim - 1))) for a in self.alpha_sigma(t))
        return alpha * x + sigma * eps


class CosineSchedule(LogSNRSchedule):
    """The cosine schedule (Nichol & Dhariwal, 2021) in continuous time, used by Imagen's base and 64->256 models.

    alpha_t = cos(pi t / 2) gives lambda_t = -2 log tan(pi t / 2); t is rescaled so that lambda stays in
    [logsnr_min, logsnr_max] and z_0 / z_1 are numerically usable.

    `shift` s != 1 is the "shifted cosine" of simple diffusion (Hoogeboom et al. 2023, §3.1), not in Imagen:
    lambda_t + 2 log s at every t, clipping range included; s > 1 puts every step at a higher SNR (less noise), as
    their rule s = 64 / resolution does for images smaller than 64 px, s < 1 at a lower one. It moves training (t
    is still uniform) and the samplers' steps together.
    """

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 1.0):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"cosine schedule needs logsnr_min < logsnr_max, got {logsnr_min} >= {logsnr_max}")
        if not shift > 0:
            raise ValueError(f"cosine schedule needs shift > 0 (1: unshifted), got {shift}")
        self.t_min = math.atan(math.exp(-0.5 * logsnr_max))
        self.t_max = math.atan(math.exp(-0.5 * logsnr_min))
        self.logsnr_shift = 2.0 * math.log(shift)

    def logsnr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(self.t_min + t * (self.t_max - self.t_min))) + self.logsnr_shift


class LinearSchedule(LogSNRSchedule):
    """The continuous-time limit of DDPM's linear beta schedule (Ho et al., 2020), used by Imagen's 256->1024 model.

    log alpha_t^2 = -(beta_0 t + (beta_1 - beta_0) t^2 / 2), hence lambda_t = -log(expm1(beta_0 t + (beta_1 - beta_0) t^2 / 2)).
    With beta_0 = 0.1, beta_1 = 20 this matches 1000 DDPM steps from 1e-4 to 0.02.
    """

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-4):
        if not 0 < beta_0 < beta_1:
            raise ValueError(f"linear schedule needs 0 < beta_0 < beta_1, got beta_0={beta_0}, beta_1={beta_1}")
        self.beta_0, self.beta_1, self.t_min = beta_0, beta_1, t_min

    def logsnr(self, t: Tensor) -> Tensor:
        t = self.t_min + t * (1.0 - self.t_min)  # lambda(0) is +inf: start at t_min
        return -torch.log(torch.expm1(self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2))
