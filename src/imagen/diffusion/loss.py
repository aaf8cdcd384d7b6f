"""The diffusion training objective (Imagen App. A): a weighted squared error on the network's target.

    L = E_{x, c, eps, t} [ w(lambda_t) || f_theta(z_t, t, c) - target(x, eps, t) ||^2 ],   t ~ U(0, 1).

The loss is taken in the parameterisation's own space (eps, x or v), which fixes the implicit weighting
of the x-space error: eps-prediction weights it by SNR = alpha^2/sigma^2, v-prediction by SNR + 1,
x-prediction by 1 (w = 1 in the parameterisation's space, as in the paper).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .parameterization import Parameterization
from .schedule import LogSNRSchedule


class DiffusionLoss(nn.Module):
    """Samples t ~ U(0, 1) and eps ~ N(0, I), noises x, and returns the mean squared error on the target.

    `denoise(z_t, t) -> network output` is the model closed over its conditioning.
    """

    def __init__(self, schedule: LogSNRSchedule, parameterization: Parameterization):
        super().__init__()
        self.schedule, self.parameterization = schedule, parameterization

    def forward(self, denoise, x: Tensor, t: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        t = torch.rand(b, device=x.device) if t is None else t  # (B,)
        eps = torch.randn_like(x) if eps is None else eps  # (B, C, H, W)
        alpha, sigma = (a.view(b, 1, 1, 1) for a in self.schedule.alpha_sigma(t))
        z_t = alpha * x + sigma * eps
        target = self.parameterization.target(x, eps, alpha, sigma)
        err = (denoise(z_t, t) - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        return err.mean()
