"""The sampling-time denoiser: one network evaluation turned into (x0_hat, eps_hat) at (z_t, t), with
classifier-free guidance (§2.2) and thresholding of x0_hat (§2.3).

Conditional and unconditional passes run as one batched forward of size 2B.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .guidance import guide, null_condition
from .parameterization import Parameterization
from .schedule import LogSNRSchedule
from .thresholding import NoThresholding, Thresholding


class GuidedDenoiser:
    """Closes a network over its text condition; call it as denoiser(z (B,C,H,W), t float) -> (x0_hat, eps_hat)."""

    def __init__(
        self,
        net: nn.Module,
        schedule: LogSNRSchedule,
        parameterization: Parameterization,
        text_emb: Tensor,  # (B, L, D)
        text_mask: Tensor,  # (B, L) bool
        guidance_weight: float = 1.0,
        thresholding: Thresholding | None = None,
        **net_kwargs,  # extra network inputs (e.g. a low-resolution image), batched like z
    ):
        if guidance_weight < 0:
            raise ValueError(f"guidance weight must be >= 0 (1 disables guidance), got {guidance_weight}")
        self.net, self.schedule, self.parameterization = net, schedule, parameterization
        self.w = float(guidance_weight)
        self.thresholding = thresholding or NoThresholding()
        self.net_kwargs = net_kwargs
        if self.w == 1.0:  # guidance disabled: the conditional pass alone
            self.emb, self.mask = text_emb, text_mask
        else:
            null_emb, null_mask = null_condition(text_emb, text_mask)
            self.emb, self.mask = torch.cat([text_emb, null_emb]), torch.cat([text_mask, null_mask])
            self.net_kwargs = {k: torch.cat([v, v]) for k, v in net_kwargs.items()}

    @torch.no_grad()
    def __call__(self, z: Tensor, t: float) -> tuple[Tensor, Tensor]:
        b = z.shape[0]
        t_vec = torch.full((b,), float(t), device=z.device)
        alpha, sigma = (a.view(b, 1, 1, 1) for a in self.schedule.alpha_sigma(t_vec))
        if self.w == 1.0:
            out = self.net(z, t_vec, self.emb, self.mask, **self.net_kwargs)
            _, eps = self.parameterization.to_x0_eps(out, z, alpha, sigma)
        else:
            out = self.net(torch.cat([z, z]), torch.cat([t_vec, t_vec]), self.emb, self.mask, **self.net_kwargs)
            out_c, out_u = out.chunk(2)
            # Guidance is linear in the network output, so it is applied on eps for every parameterisation.
            eps = guide(
                self.parameterization.to_x0_eps(out_c, z, alpha, sigma)[1],
                self.parameterization.to_x0_eps(out_u, z, alpha, sigma)[1],
                self.w,
            )
        x0 = self.thresholding((z - sigma * eps) / alpha)
        # eps consistent with the thresholded x0, for samplers that step with eps (DDIM).
        eps = (z - alpha * x0) / sigma
        return x0, eps
