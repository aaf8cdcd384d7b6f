"""Closed-form checks of the diffusion core (Imagen App. A, §2.2, §2.3)."""

import numpy as np
import pytest
import torch

from imagen.diffusion.denoiser import GuidedDenoiser
from imagen.diffusion.guidance import drop_condition, guide, null_condition
from imagen.diffusion.loss import DiffusionLoss
from imagen.diffusion.parameterization import EpsPrediction, VPrediction, X0Prediction
from imagen.diffusion.samplers import AncestralSampler, DDIMSampler
from imagen.diffusion.schedule import CosineSchedule, LinearSchedule
from imagen.diffusion.thresholding import DynamicThresholding, NoThresholding, StaticThresholding

SCHEDULES = [CosineSchedule(), CosineSchedule(shift=2.0), CosineSchedule(shift=0.5), LinearSchedule()]
PARAMS = [EpsPrediction(), X0Prediction(), VPrediction()]
T = torch.linspace(0, 1, 1001, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_variance_preserving(schedule):
    alpha, sigma = schedule.alpha_sigma(T)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_logsnr_strictly_decreasing(schedule):
    lam = schedule.logsnr(T)
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all()


def test_cosine_endpoints_and_midpoint():
    s = CosineSchedule(-20, 20)
    lam = s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(lam, torch.tensor([20.0, -20.0], dtype=torch.float64))
    # Unclipped cosine schedule: alpha_t = cos(pi t / 2), so lambda(1/2) = 0.
    assert abs(CosineSchedule(-80, 80).logsnr(torch.tensor(0.5, dtype=torch.float64)).item()) < 1e-9


@pytest.mark.parametrize("shift", [0.25, 0.5, 2.0, 4.0])
def test_shifted_cosine_adds_2_log_shift_everywhere(shift):
    # simple diffusion's shifted cosine: lambda_s(t) = -2 log tan(pi t / 2) + 2 log s, at every t and at the clip bounds;
    # at the midpoint of the unclipped schedule, SNR = s^2.
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(
        CosineSchedule(-20, 20, shift=shift).logsnr(t), CosineSchedule(-20, 20).logsnr(t) + 2 * np.log(shift)
    )
    alpha, sigma = CosineSchedule(-80, 80, shift=shift).alpha_sigma(torch.tensor(0.5, dtype=torch.float64))
    assert abs((alpha / sigma).item() - shift) < 1e-9


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_shifted_cosine_refuses_a_non_positive_shift(shift):
    with pytest.raises(ValueError, match="shift > 0"):
        CosineSchedule(shift=shift)


def test_linear_matches_ddpm_betas():
    # DDPM: 1000 steps, beta from 1e-4 to 0.02; alpha_bar at the last step vs the continuous schedule at t=1.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    alpha, _ = LinearSchedule().alpha_sigma(torch.tensor([0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(alpha**2, alpha_bar[[499, 999]], rtol=0.15, atol=0)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: type(p).__name__)
def test_parameterization_recovers_x0_and_eps(param):
    g = torch.Generator().manual_seed(0)
    x, eps = (
        torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
    )
    alpha, sigma = (
        a.view(4, 1, 1, 1)
        for a in CosineSchedule().alpha_sigma(torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64))
    )
    z = alpha * x + sigma * eps
    x_hat, eps_hat = param.to_x0_eps(param.target(x, eps, alpha, sigma), z, alpha, sigma)
    torch.testing.assert_close(x_hat, x)
    torch.testing.assert_close(eps_hat, eps)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: type(p).__name__)
def test_loss_is_zero_for_the_oracle_and_positive_otherwise(param):
    schedule = CosineSchedule()
    loss_fn = DiffusionLoss(schedule, param)
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    t, eps = torch.rand(6), torch.randn_like(x)
    alpha, sigma = (a.view(6, 1, 1, 1) for a in schedule.alpha_sigma(t))
    oracle = lambda z, tt: param.target(x, eps, alpha, sigma)  # noqa: E731
    assert loss_fn(oracle, x, t, eps).item() < 1e-10
    assert loss_fn(lambda z, tt: torch.zeros_like(z), x, t, eps).item() > 0.01


def test_condition_dropping():
    emb, mask = torch.randn(4000, 3, 5), torch.ones(4000, 3, dtype=torch.bool)
    e0, m0 = drop_condition(emb, mask, 0.0)
    assert torch.equal(e0, emb) and torch.equal(m0, mask)
    e1, m1 = drop_condition(emb, mask, 1.0)
    assert (e1 == 0).all() and not m1.any()
    e, m = drop_condition(emb, mask, 0.1, torch.Generator().manual_seed(0))
    dropped = ~m.any(1)
    assert 0.08 < dropped.float().mean() < 0.12
    assert (e[dropped] == 0).all() and torch.equal(e[~dropped], emb[~dropped])
    ne, nm = null_condition(emb, mask)
    assert (ne == 0).all() and not nm.any()


def test_guidance_formula():
    c, u = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(guide(c, u, 1.0), c)
    torch.testing.assert_close(guide(c, u, 0.0), u)
    torch.testing.assert_close(guide(c, u, 3.0), 3 * c - 2 * u)


# ------------------------------------------------------------------ thresholding (§2.3)
def test_static_clips():
    x = torch.tensor([[-3.0, -0.5, 0.5, 2.0]])
    torch.testing.assert_close(StaticThresholding()(x), torch.tensor([[-1.0, -0.5, 0.5, 1.0]]))


def test_dynamic_equals_static_when_s_at_most_one():
    # Percentile of |x0| <= 1 (only a few outliers above 1): dynamic = static clipping.
    x = torch.rand(3, 3, 16, 16) * 1.8 - 0.9
    x[:, 0, 0, 0] = 5.0  # one outlier per sample, below the 99.5th percentile's reach
    torch.testing.assert_close(DynamicThresholding(99.5)(x), StaticThresholding()(x))


def test_thresholding_leaves_in_range_x0_unchanged():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for th in (NoThresholding(), StaticThresholding(), DynamicThresholding()):
        torch.testing.assert_close(th(x), x)


def test_dynamic_uses_per_sample_percentile():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g) * torch.tensor([0.2, 1.0, 3.0, 10.0]).view(4, 1, 1, 1)
    # An independent percentile (numpy's linear interpolation), not the code's torch.quantile.
    s = (
        torch.from_numpy(np.percentile(x.reshape(4, -1).abs().numpy(), 99.5, axis=1).clip(min=1))
        .float()
        .view(4, 1, 1, 1)
    )
    out = DynamicThresholding(99.5)(x)
    torch.testing.assert_close(out, x.clamp(-s, s) / s)
    assert out.abs().max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="percentile"):
        DynamicThresholding(0)


# ------------------------------------------------------------------ samplers (App. A)
class PointMassNet(torch.nn.Module):
    """The exact eps-predictor when the data distribution is a point mass at c: eps = (z - alpha c) / sigma."""

    def __init__(self, c, schedule):
        super().__init__()
        self.c, self.schedule = c, schedule

    def forward(self, z, t, emb, mask):
        alpha, sigma = (a.view(-1, 1, 1, 1) for a in self.schedule.alpha_sigma(t))
        return (z - alpha * self.c) / sigma


@pytest.mark.parametrize(
    "sampler",
    [AncestralSampler(steps=20, gamma=0.0), AncestralSampler(steps=20, gamma=0.5), DDIMSampler(steps=10)],
    ids=["ancestral", "ancestral_gamma", "ddim"],
)
@pytest.mark.parametrize(
    "thresholding", [NoThresholding(), StaticThresholding(), DynamicThresholding()], ids=["none", "static", "dynamic"]
)
def test_samplers_recover_a_point_mass(sampler, thresholding):
    schedule = CosineSchedule()
    c = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    den = GuidedDenoiser(
        PointMassNet(c, schedule),
        schedule,
        EpsPrediction(),
        torch.zeros(2, 1, 4),
        torch.ones(2, 1, dtype=torch.bool),
        3.0,
        thresholding,
    )
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = sampler(den, schedule, z, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, c.expand(2, -1, -1, -1), atol=1e-4, rtol=0)


def test_ancestral_sampling_is_deterministic_given_the_seed():
    schedule = CosineSchedule()
    net = lambda z, t, e, m: torch.sin(z) * 0.5  # noqa: E731
    den = GuidedDenoiser(net, schedule, EpsPrediction(), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), 2.0)
    runs = [
        AncestralSampler(steps=10)(den, schedule, torch.zeros(2, 3, 4, 4), torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_guided_denoiser_batches_the_two_passes():
    schedule, param = CosineSchedule(), VPrediction()
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    net = lambda z, t, e, m: z * t.view(-1, 1, 1, 1) + lin(e.sum(1)).view(-1, 3, 1, 1)  # noqa: E731
    emb, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    z = torch.randn(2, 3, 4, 4)
    x_g, _ = GuidedDenoiser(net, schedule, param, emb, mask, 4.0)(z, 0.3)
    x_c, e_c = GuidedDenoiser(net, schedule, param, emb, mask, 1.0)(z, 0.3)
    x_u, e_u = GuidedDenoiser(net, schedule, param, *null_condition(emb, mask), 1.0)(z, 0.3)
    alpha, sigma = schedule.alpha_sigma(torch.tensor(0.3))
    torch.testing.assert_close(x_g, (z - sigma * guide(e_c, e_u, 4.0)) / alpha, atol=1e-5, rtol=1e-5)
