"""The diffusion training objective (Imagen App. A): a weighted squared error on the network's target.

    L = E_{x, c, eps, t} [ w(lambda_t) || f_theta(z_t, t, c) - target(x, eps, t) ||^2 ],   t ~ U(0, 1).

The loss is taken in the parameterisation's own space (eps, x or v), which fixes the implicit weighting
of the x-space error: eps-prediction weights it by SNR = alpha^2/sigma^2, v-prediction by SNR + 1,
x-prediction by 1 (w = 1 in the parameterisation's space, as in the paper: `loss_weight=uniform`).

`loss_weight=min_snr` is Min-SNR-gamma weighting (Hang et al., 2023): the x-space weight becomes min(SNR, gamma),
i.e. w = min(SNR, gamma) / (the parameterisation's implied weight), which caps what the nearly clean, high-SNR
timesteps (easy, and dominant under eps- and v-prediction) contribute. Not in the Imagen paper: a lever for
sample efficiency at small scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .parameterization import Parameterization
from .schedule import LogSNRSchedule


class LossWeight:
    """w per sample in the parameterisation's space: 1 (the paper's plain squared error)."""

    def __call__(self, snr: Tensor, parameterization: Parameterization) -> Tensor:
        return torch.ones_like(snr)


class MinSNRWeight(LossWeight):
    """Min-SNR-gamma: x-space weight min(SNR, gamma), whatever the parameterisation predicts."""

    def __init__(self, gamma: float = 5.0):
        if not gamma > 0:
            raise ValueError(f"loss_weight.gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, snr: Tensor, parameterization: Parameterization) -> Tensor:
        return snr.clamp(max=self.gamma) / parameterization.x_weight(snr)


class DiffusionLoss(nn.Module):
    """Samples t ~ U(0, 1) and eps ~ N(0, I), noises x, and returns the mean squared error on the target.

    `denoise(z_t, t) -> network output` is the model closed over its conditioning.
    """

    def __init__(self, schedule: LogSNRSchedule, parameterization: Parameterization, weight: LossWeight | None = None):
        super().__init__()
        self.schedule, self.parameterization = schedule, parameterization
        self.weight = weight or LossWeight()

    def forward(self, denoise, x: Tensor, t: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        t = torch.rand(b, device=x.device) if t is None else t  # (B,)
        eps = torch.randn_like(x) if eps is None else eps  # (B, C, H, W)
        alpha, sigma = (a.view(b, 1, 1, 1) for a in self.schedule.alpha_sigma(t))
        z_t = alpha * x + sigma * eps
        target = self.parameterization.target(x, eps, alpha, sigma)
        err = (denoise(z_t, t) - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        snr = torch.exp(self.schedule.logsnr(t))  # (B,)
        return (self.weight(snr, self.parameterization) * err).mean()
