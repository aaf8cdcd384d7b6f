"""What the network predicts: eps, x (= x0) or v (Imagen App. A; v from Salimans & Ho, 2022).

With z = alpha x + sigma eps and alpha^2 + sigma^2 = 1:
  eps-prediction:  x = (z - sigma eps) / alpha
  x-prediction:    eps = (z - alpha x) / sigma
  v-prediction:    v = alpha eps - sigma x,  so  x = alpha z - sigma v  and  eps = sigma z + alpha v.
Each class returns its training target, maps a network output back to (x0_hat, eps_hat), and says how much a squared
error in its own space weighs a squared error in x (`x_weight`): eps-prediction SNR, v-prediction SNR + 1,
x-prediction 1 (with x_hat = x + delta, eps_hat - eps = -(alpha / sigma) delta, v_hat - v = -delta / sigma).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Parameterization:
    """Interface: training target and the inverse map to (x0, eps). alpha, sigma broadcast against z."""

    def target(self, x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0_eps(self, out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def x_weight(self, snr: Tensor) -> Tensor:
        """The weight of the x-space squared error implied by a plain squared error on this target (App. A)."""
        raise NotImplementedError


class EpsPrediction(Parameterization):
    """The network predicts the noise eps (Ho et al., 2020); Imagen's default."""

    def target(self, x, eps, alpha, sigma):
        return eps

    def to_x0_eps(self, out, z, alpha, sigma):
        return (z - sigma * out) / alpha, out

    def x_weight(self, snr):
        return snr


class X0Prediction(Parameterization):
    """The network predicts the clean image x directly."""

    def target(self, x, eps, alpha, sigma):
        return x

    def to_x0_eps(self, out, z, alpha, sigma):
        return out, (z - alpha * out) / sigma

    def x_weight(self, snr):
        return torch.ones_like(snr)


class VPrediction(Parameterization):
    """The network predicts v = alpha eps - sigma x (Salimans & Ho, 2022), used by Imagen's SR models."""

    def target(self, x, eps, alpha, sigma):
        return alpha * eps - sigma * x

    def to_x0_eps(self, out, z, alpha, sigma):
        return alpha * z - sigma * out, sigma * z + alpha * out

    def x_weight(self, snr):
        return snr + 1.0
