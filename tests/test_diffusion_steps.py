"""Step-level closed-form checks of the samplers and the diffusion core (Saharia et al. 2022, App. A, §2.2-§2.4).

`test_samplers_recover_a_point_mass` (test_diffusion.py) cannot tell a right sampler from a wrong one: a
point-mass denoiser returns the same x0 whatever z_t is, so e.g. a DDIM with alpha and sigma swapped still lands
on it. Here every single step is checked against the paper's formula, written out in the test (float64, from
the log-SNR lambda), with stub denoisers whose x0-prediction depends on z_t.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imagen.cascade.noise_augmentation import GaussianAugmentation
from imagen.cascade.stage import SuperResolution
from imagen.diffusion.denoiser import GuidedDenoiser
from imagen.diffusion.loss import DiffusionLoss, MinSNRWeight
from imagen.diffusion.parameterization import EpsPrediction, VPrediction, X0Prediction
from imagen.diffusion.samplers import AncestralSampler, DDIMSampler
from imagen.diffusion.schedule import CosineSchedule, LinearSchedule, LogSNRSchedule
from imagen.diffusion.thresholding import (
    DynamicThresholding,
    NoThresholding,
    StaticThresholding,
)

D = torch.float64
TOL = {"rtol": 1e-4, "atol": 1e-5}  # where the code under test computes alpha_t, sigma_t in float32
TOL64 = {"rtol": 1e-9, "atol": 1e-9}  # where it runs in float64 (fixture float64_default)


@pytest.fixture
def float64_default():
    """Run the code under test in float64 (its time grid and t are built in the default dtype): near t = 1 the
    cosine schedule's lambda is ill-conditioned in float32, and the steps are checked against float64 closed forms."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ reference closed forms (App. A)
class AffineLogSNR(LogSNRSchedule):
    """lambda_t = 4 - 8 t: a well-conditioned schedule on which every step, the first included, moves z_t a lot."""

    def logsnr(self, t):
        return 4.0 - 8.0 * t


def cosine_lambda(lam_min: float, lam_max: float):
    """lambda_t = -2 log tan(pi t' / 2) with t' rescaled so that lambda spans [lam_min, lam_max]."""
    u_min, u_max = math.atan(math.exp(-0.5 * lam_max)), math.atan(math.exp(-0.5 * lam_min))
    return lambda t: -2.0 * math.log(math.tan(u_min + t * (u_max - u_min)))


def linear_lambda(beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-4):
    """DDPM's linear betas in continuous time: alpha_t^2 = exp(-(beta_0 t + (beta_1 - beta_0) t^2 / 2))."""

    def lam(t):
        t = t_min + t * (1.0 - t_min)
        return -math.log(math.expm1(beta_0 * t + 0.5 * (beta_1 - beta_0) * t * t))

    return lam


# (schedule under test, its log-SNR written out here)
SCHEDULES = [
    (AffineLogSNR(), lambda t: 4.0 - 8.0 * t),
    (CosineSchedule(-20.0, 20.0), cosine_lambda(-20.0, 20.0)),
    (LinearSchedule(0.1, 20.0, 1e-4), linear_lambda(0.1, 20.0, 1e-4)),
]
SCHEDULE_IDS = ["affine", "cosine", "linear"]


def alpha_sigma(lam: float) -> tuple[float, float]:
    """Variance preserving: alpha^2 = 1 / (1 + e^{-lambda}), sigma^2 = 1 / (1 + e^{lambda}) (App. A)."""
    return math.sqrt(1.0 / (1.0 + math.exp(-lam))), math.sqrt(1.0 / (1.0 + math.exp(lam)))


def posterior_app_a(z_t, x, lam_t, lam_s, gamma):
    """q(z_s | z_t, x) as written in App. A, with the variance interpolated by gamma. Returns (mean, var)."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(lam_t), alpha_sigma(lam_s)
    r = math.exp(lam_t - lam_s)  # e^{lambda_t - lambda_s}
    mean = r * (alpha_s / alpha_t) * z_t + (1.0 - r) * alpha_s * x
    tilde_sigma2_s_t = (1.0 - r) * sigma_s**2
    sigma2_t_s = (1.0 - r) * sigma_t**2
    return mean, tilde_sigma2_s_t ** (1.0 - gamma) * sigma2_t_s**gamma


def posterior_gaussian_conditioning(z_t, x, lam_t, lam_s, gamma):
    """The same posterior derived from q(z_t | z_s) = N(alpha_{t|s} z_s, sigma^2_{t|s}) by Gaussian conditioning."""
    (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(lam_t), alpha_sigma(lam_s)
    alpha_t_s = alpha_t / alpha_s
    sigma2_t_s = sigma_t**2 - alpha_t_s**2 * sigma_s**2
    mean = alpha_t_s * sigma_s**2 / sigma_t**2 * z_t + alpha_s * sigma2_t_s / sigma_t**2 * x
    posterior_var = sigma2_t_s * sigma_s**2 / sigma_t**2
    return mean, posterior_var ** (1.0 - gamma) * sigma2_t_s**gamma


class AffineX0Denoiser:
    """A denoiser stub: x0_hat(z_t) = 0.3 z_t + c, which depends on z_t (unlike a point mass); records every call."""

    def __init__(self, lam, c):
        self.lam, self.c, self.calls = lam, c, []

    def x0(self, z):
        return 0.3 * z + self.c

    def __call__(self, z, t):
        self.calls.append((z.clone(), float(t)))
        alpha, sigma = alpha_sigma(self.lam(float(t)))
        x0 = self.x0(z)
        return x0, (z - alpha * x0) / sigma


def _z1_and_c(shape=(3, 2, 4, 4)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=D), torch.randn(shape[1:], generator=g, dtype=D)


# ------------------------------------------------------------------ 1. ancestral step (App. A)
@pytest.mark.parametrize("posterior", [posterior_app_a, posterior_gaussian_conditioning], ids=["app_a", "conditioning"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("schedule,lam", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.usefixtures("float64_default")
def test_ancestral_every_step_is_the_posterior_sample(schedule, lam, gamma, posterior):
    """App. A: z_s = mu_{s|t}(z_t, x0_hat) + sqrt((sigma~^2_{s|t})^{1-gamma} (sigma^2_{t|s})^gamma) noise at every
    step; the noise is replayed from an identically seeded generator, the final output is x0_hat at t_1."""
    z1, c = _z1_and_c()
    den = AffineX0Denoiser(lam, c)
    out = AncestralSampler(steps=4, gamma=gamma)(den, schedule, z1, torch.Generator().manual_seed(7))
    assert len(den.calls) == 4
    assert torch.equal(den.calls[0][0], z1) and den.calls[0][1] == 1.0 and den.calls[-1][1] > 0.0
    replay = torch.Generator().manual_seed(7)
    for (z_t, t), (z_s, s) in zip(den.calls, den.calls[1:]):
        assert s < t
        noise = torch.randn(z_t.shape, generator=replay, dtype=D)
        mean, var = posterior(z_t, den.x0(z_t), lam(t), lam(s), gamma)
        torch.testing.assert_close(z_s, mean + math.sqrt(var) * noise, **TOL64)
    torch.testing.assert_close(out, den.x0(den.calls[-1][0]), **TOL64)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_ancestral_first_step_mean_and_std_separately(gamma):
    """App. A: the mean and the std of one step, each recovered on its own from two seeded runs from the same z_1
    (z_s^(k) = mean + std n^(k), n^(k) replayed), against the closed forms; both derivations must agree."""
    lam = SCHEDULES[0][1]
    z1, c = _z1_and_c()
    zs, noises = [], []
    for seed in (11, 12):
        den = AffineX0Denoiser(lam, c)
        AncestralSampler(steps=2, gamma=gamma)(den, AffineLogSNR(), z1, torch.Generator().manual_seed(seed))
        (_, t), (z_s, s) = den.calls
        assert (t, s) == (1.0, 0.5)
        zs.append(z_s)
        noises.append(torch.randn(z1.shape, generator=torch.Generator().manual_seed(seed), dtype=D))
    dn = noises[0] - noises[1]
    std = ((zs[0] - zs[1]) * dn).sum() / (dn * dn).sum()  # least squares: z^(0) - z^(1) = std (n^(0) - n^(1))
    mean = zs[0] - std * noises[0]
    x0 = 0.3 * z1 + c
    for posterior in (posterior_app_a, posterior_gaussian_conditioning):
        mean_ref, var_ref = posterior(z1, x0, lam(1.0), lam(0.5), gamma)
        torch.testing.assert_close(std.item(), math.sqrt(var_ref), rtol=1e-5, atol=0)
        torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    # The test discriminates: z_t's own coefficient and the two variance bounds are far apart on this schedule.
    (a_t, s_t), (a_s, s_s) = alpha_sigma(lam(1.0)), alpha_sigma(lam(0.5))
    assert math.exp(lam(1.0) - lam(0.5)) * a_s / a_t > 0.05 and s_t**2 / s_s**2 > 1.5


def test_the_two_posterior_derivations_agree():
    """App. A's e^{lambda_t - lambda_s} form equals Gaussian conditioning (a check of the references themselves)."""
    z, x = torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    for lam_t, lam_s in [(-20.0, 0.3), (-4.0, 0.0), (1.0, 2.5), (3.0, 15.0)]:
        for gamma in (0.0, 0.3, 1.0):
            m1, v1 = posterior_app_a(z, x, lam_t, lam_s, gamma)
            m2, v2 = posterior_gaussian_conditioning(z, x, lam_t, lam_s, gamma)
            torch.testing.assert_close(m1, m2, rtol=1e-9, atol=1e-9)
            assert math.isclose(v1, v2, rel_tol=1e-9)


# ------------------------------------------------------------------ 2.-4. parameterisations, denoiser, DDIM
def x0_eps_of(param, out, z, alpha, sigma):
    """(x0_hat, eps_hat) from a network output, written out per parameterisation (App. A)."""
    if isinstance(param, EpsPrediction):
        return (z - sigma * out) / alpha, out
    if isinstance(param, X0Prediction):
        return out, (z - alpha * out) / sigma
    assert isinstance(param, VPrediction)  # v = alpha eps - sigma x  =>  x = alpha z - sigma v, eps = sigma z + alpha v
    return alpha * z - sigma * out, sigma * z + alpha * out


def clip_ref(x0):
    return np.clip(x0.numpy(), -1.0, 1.0)


class AffineNet(torch.nn.Module):
    """A network stub: output = 0.3 z + c + (sum of the text embedding), in the parameterisation's own space;
    records its inputs (the guided batch of 2B included)."""

    def __init__(self, c, scale=1.0):
        super().__init__()
        self.c, self.scale, self.calls = c, scale, []

    def forward(self, z, t, emb, mask, **kwargs):
        self.calls.append(
            {
                "z": z.clone(),
                "t": t.clone(),
                "emb": emb.clone(),
                "mask": mask.clone(),
                **{k: v.clone() for k, v in kwargs.items()},
            }
        )
        return self.scale * (0.3 * z + self.c) + emb.sum(dim=(1, 2)).to(z.dtype).view(-1, 1, 1, 1)


PARAMS = [EpsPrediction(), X0Prediction(), VPrediction()]
PARAM_IDS = ["eps", "x", "v"]


@pytest.mark.parametrize("param", PARAMS, ids=PARAM_IDS)
@pytest.mark.parametrize("schedule,lam", SCHEDULES, ids=SCHEDULE_IDS)
@pytest.mark.usefixtures("float64_default")
def test_ddim_every_step_is_alpha_s_x0_plus_sigma_s_eps(schedule, lam, param):
    """DDIM (eta = 0): z_s = alpha_s x0_hat + sigma_s eps_hat, eps_hat = (z_t - alpha_t x0_hat) / sigma_t, with a
    network whose x0_hat depends on z_t, so alpha <-> sigma swaps, or a z_t-free step, are caught."""
    z1, c = _z1_and_c()
    net = AffineNet(c)
    emb, mask = torch.zeros(3, 2, 4), torch.ones(3, 2, dtype=torch.bool)
    den = GuidedDenoiser(net, schedule, param, emb, mask, 1.0, NoThresholding())
    out = DDIMSampler(steps=4)(den, schedule, z1)
    assert len(net.calls) == 4 and torch.equal(net.calls[0]["z"], z1)
    x0_last = None
    for k, call in enumerate(net.calls):
        z_t, t = call["z"], call["t"][0].item()
        assert torch.all(call["t"] == call["t"][0])
        alpha_t, sigma_t = alpha_sigma(lam(t))
        x0_hat, _ = x0_eps_of(param, 0.3 * z_t + c, z_t, alpha_t, sigma_t)
        eps_hat = (z_t - alpha_t * x0_hat) / sigma_t
        x0_last = x0_hat
        if k + 1 < len(net.calls):
            z_s, s = net.calls[k + 1]["z"], net.calls[k + 1]["t"][0].item()
            alpha_s, sigma_s = alpha_sigma(lam(s))
            assert s < t
            torch.testing.assert_close(z_s, alpha_s * x0_hat + sigma_s * eps_hat, **TOL64)
    torch.testing.assert_close(out, x0_last, **TOL64)


@pytest.mark.parametrize("param", PARAMS, ids=PARAM_IDS)
def test_targets_and_inverse_maps_written_out(param):
    """App. A: eps target = eps, x target = x, v target = alpha eps - sigma x (Salimans & Ho); and the inverse maps
    on an arbitrary network output: x = (z - sigma eps) / alpha; eps = (z - alpha x) / sigma;
    x = alpha z - sigma v, eps = sigma z + alpha v."""
    g = torch.Generator().manual_seed(3)
    x, eps, out, z = (torch.randn(4, 3, 2, 2, generator=g, dtype=D) for _ in range(4))
    lams = [-6.0, -1.0, 0.7, 5.0]
    alpha = torch.tensor([alpha_sigma(l)[0] for l in lams], dtype=D).view(4, 1, 1, 1)
    sigma = torch.tensor([alpha_sigma(l)[1] for l in lams], dtype=D).view(4, 1, 1, 1)
    target = {EpsPrediction: eps, X0Prediction: x, VPrediction: alpha * eps - sigma * x}[type(param)]
    torch.testing.assert_close(param.target(x, eps, alpha, sigma), target, rtol=1e-12, atol=1e-12)
    want_x0, want_eps = {
        EpsPrediction: ((z - sigma * out) / alpha, out),
        X0Prediction: (out, (z - alpha * out) / sigma),
        VPrediction: (alpha * z - sigma * out, sigma * z + alpha * out),
    }[type(param)]
    got_x0, got_eps = param.to_x0_eps(out, z, alpha, sigma)
    torch.testing.assert_close(got_x0, want_x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_eps, want_eps, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ 3. eps from the thresholded x0 (§2.3)
@pytest.mark.parametrize("w", [1.0, 3.0])
@pytest.mark.parametrize("param", PARAMS, ids=PARAM_IDS)
def test_denoiser_recomputes_eps_from_the_clipped_x0(param, w):
    """§2.3 with static thresholding: x0_hat is clipped to [-1, 1] and the eps handed to the sampler is
    (z_t - alpha_t clip(x0_hat)) / sigma_t, not the network's (guided) eps; guidance is eps_u + w (eps_c - eps_u)."""
    schedule, lam = SCHEDULES[1]
    t = 0.4
    alpha, sigma = alpha_sigma(lam(t))
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=D)
    c = 3.0 * torch.randn(3, 4, 4, generator=g, dtype=D)
    emb, mask = torch.full((2, 2, 3), 0.1), torch.ones(2, 2, dtype=torch.bool)
    x0, eps = GuidedDenoiser(AffineNet(c), schedule, param, emb, mask, w, StaticThresholding())(z, t)
    out_c = 0.3 * z + c + 0.6  # emb.sum() = 0.6 for the conditional pass, 0 for the null condition
    out_u = 0.3 * z + c
    eps_c, eps_u = x0_eps_of(param, out_c, z, alpha, sigma)[1], x0_eps_of(param, out_u, z, alpha, sigma)[1]
    eps_guided = eps_c if w == 1.0 else eps_u + w * (eps_c - eps_u)
    x0_raw = (z - sigma * eps_guided) / alpha
    assert (x0_raw.abs() > 1.0).float().mean() > 0.3  # thresholding is active ...
    x0_clipped = torch.from_numpy(clip_ref(x0_raw))
    eps_want = (z - alpha * x0_clipped) / sigma
    assert (eps_want - eps_guided).abs().max() > 0.1  # ... and changes eps
    torch.testing.assert_close(x0, x0_clipped, **TOL)
    torch.testing.assert_close(eps, eps_want, **TOL)


def test_ddim_steps_with_the_clipped_x0_and_its_eps():
    """§2.3 + DDIM: z_s = alpha_s clip(x0_hat) + sigma_s (z_t - alpha_t clip(x0_hat)) / sigma_t at every step."""
    schedule, lam = SCHEDULES[0]
    z1, c = _z1_and_c()
    net = AffineNet(3.0 * c)
    den = GuidedDenoiser(
        net,
        schedule,
        EpsPrediction(),
        torch.zeros(3, 1, 2),
        torch.ones(3, 1, dtype=torch.bool),
        1.0,
        StaticThresholding(),
    )
    DDIMSampler(steps=4)(den, schedule, z1)
    clipped_somewhere = False
    for prev, nxt in zip(net.calls, net.calls[1:]):
        z_t, t, z_s, s = prev["z"], prev["t"][0].item(), nxt["z"], nxt["t"][0].item()
        (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha_sigma(lam(t)), alpha_sigma(lam(s))
        x0_raw = (z_t - sigma_t * (0.3 * z_t + 3.0 * c)) / alpha_t
        clipped_somewhere |= bool((x0_raw.abs() > 1).any())
        x0 = torch.from_numpy(clip_ref(x0_raw))
        torch.testing.assert_close(z_s, alpha_s * x0 + sigma_s * (z_t - alpha_t * x0) / sigma_t, **TOL)
    assert clipped_somewhere


# ------------------------------------------------------------------ 5. implied x-space weights of the loss (App. A)
class OffByDelta:
    """A network whose x-prediction is x_hat = x + delta, expressed in the parameterisation's own space from the z_t it
    is given: eps_hat = (z_t - alpha x_hat) / sigma, v_hat = alpha eps_hat - sigma x_hat."""

    def __init__(self, param, x_hat, alpha, sigma):
        self.param, self.x_hat, self.alpha, self.sigma, self.seen_z = param, x_hat, alpha, sigma, None

    def __call__(self, z, t):
        self.seen_z = z
        eps_hat = (z - self.alpha * self.x_hat) / self.sigma
        if isinstance(self.param, EpsPrediction):
            return eps_hat
        if isinstance(self.param, VPrediction):
            return self.alpha * eps_hat - self.sigma * self.x_hat
        return self.x_hat


@pytest.mark.parametrize(
    "param,weight",
    [
        (EpsPrediction(), lambda lam: math.exp(lam)),
        (VPrediction(), lambda lam: math.exp(lam) + 1.0),
        (X0Prediction(), lambda lam: 1.0),
    ],
    ids=["eps_snr", "v_snr_plus_1", "x_one"],
)
def test_loss_weights_the_x_error_by_snr_snr_plus_1_or_1(param, weight):
    """App. A: with x_hat = x + delta, the loss in the parameterisation's own space is w(lambda) mean(delta^2),
    w = SNR = e^lambda for eps, SNR + 1 for v, 1 for x."""
    schedule, lam = CosineSchedule(), cosine_lambda(-20.0, 20.0)
    loss_fn = DiffusionLoss(schedule, param)
    g = torch.Generator().manual_seed(9)
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        x, eps, delta = (torch.randn(1, 3, 4, 4, generator=g, dtype=D) for _ in range(3))
        alpha, sigma = alpha_sigma(lam(t))
        net = OffByDelta(param, x + delta, alpha, sigma)
        loss = loss_fn(net, x, torch.tensor([t], dtype=D), eps).item()
        torch.testing.assert_close(net.seen_z, alpha * x + sigma * eps, rtol=1e-6, atol=1e-6)
        assert math.isclose(loss, weight(lam(t)) * delta.pow(2).mean().item(), rel_tol=1e-5), (t, loss)


@pytest.mark.parametrize("param", [EpsPrediction(), VPrediction(), X0Prediction()], ids=["eps", "v", "x"])
def test_min_snr_weights_the_x_error_by_min_snr_gamma(param):
    """Min-SNR-gamma: whatever the parameterisation, the loss is min(SNR, gamma) mean(delta^2) in x."""
    schedule, lam, gamma = CosineSchedule(), cosine_lambda(-20.0, 20.0), 5.0
    loss_fn = DiffusionLoss(schedule, param, MinSNRWeight(gamma))
    g = torch.Generator().manual_seed(10)
    for t in (0.05, 0.2, 0.35, 0.5, 0.8):  # SNR above and below gamma
        x, eps, delta = (torch.randn(1, 3, 4, 4, generator=g, dtype=D) for _ in range(3))
        alpha, sigma = alpha_sigma(lam(t))
        loss = loss_fn(OffByDelta(param, x + delta, alpha, sigma), x, torch.tensor([t], dtype=D), eps).item()
        expected = min(math.exp(lam(t)), gamma) * delta.pow(2).mean().item()
        assert math.isclose(loss, expected, rel_tol=1e-5), (t, loss, expected)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        MinSNRWeight(0.0)


# ------------------------------------------------------------------ 6. dynamic thresholding (§2.3)
def percentile_by_hand(values: np.ndarray, p: float) -> float:
    """The p-th percentile with linear interpolation between order statistics (rank p/100 (n - 1))."""
    v = np.sort(values.ravel())
    pos = p / 100.0 * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def dynamic_ref(x0: torch.Tensor, p: float) -> torch.Tensor:
    """§2.3: s = max(percentile_p |x0|, 1) per sample, then clip to [-s, s] and divide by s."""
    out = np.empty(x0.shape)
    for b, xb in enumerate(x0.double().numpy()):
        s = max(percentile_by_hand(np.abs(xb), p), 1.0)
        out[b] = np.clip(xb, -s, s) / s
    return torch.from_numpy(out).to(x0.dtype)


def test_dynamic_thresholding_hand_example():
    """§2.3, by hand: |x0| = (0.5, 2, 3, 4), 50th percentile = 2.5, so x0 -> clip(x0, -2.5, 2.5) / 2.5."""
    x = torch.tensor([[[[0.5, -2.0], [3.0, 4.0]]]], dtype=D)
    want = torch.tensor([[[[0.2, -0.8], [1.0, 1.0]]]], dtype=D)
    torch.testing.assert_close(DynamicThresholding(50.0)(x), want)


@pytest.mark.parametrize("p", [90.0, 99.5, 100.0])
def test_dynamic_thresholding_per_sample_percentile(p):
    """§2.3: s is the p-th percentile of |x0| of each sample on its own (interpolated), s <= 1 only clips."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.2, 1.0, 3.0, 10.0], dtype=D).view(4, 1, 1, 1)
    x = torch.randn(4, 3, 5, 7, generator=g, dtype=D) * scales  # 105 values: the percentile falls between ranks
    out = DynamicThresholding(p)(x)
    torch.testing.assert_close(out, dynamic_ref(x, p), rtol=1e-6, atol=1e-6)  # the code takes s in float32
    # Per sample: the first sample thresholded alone is the same as inside the batch.
    torch.testing.assert_close(DynamicThresholding(p)(x[:1]), out[:1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(DynamicThresholding(p)(x[3:]), out[3:], rtol=1e-12, atol=1e-12)


def test_dynamic_thresholding_with_s_at_most_one_is_static_clipping():
    """§2.3: 'if s > 1' -- a sample whose percentile is <= 1 is only clipped to [-1, 1], never rescaled up."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 10, 10, generator=g, dtype=D) * 1.2 - 0.6  # |x0| <= 0.6 ...
    x[:, 0, 0, :2] = torch.tensor([4.0, -3.0], dtype=D)  # ... but for two outliers above the 99th percentile's reach
    for b in range(3):
        assert percentile_by_hand(np.abs(x[b].numpy()), 99.0) <= 1.0
    want = torch.from_numpy(clip_ref(x))
    assert not torch.equal(want, x)
    torch.testing.assert_close(DynamicThresholding(99.0)(x), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ 7. noise conditioning augmentation (§2.4)
def bilinear_matrix(n: int, m: int) -> torch.Tensor:
    """(m, n) matrix of 1-D bilinear upsampling n -> m with half-pixel centres (align_corners=False):
    output pixel i samples the input at max((i + 1/2) n / m - 1/2, 0)."""
    a = torch.zeros(m, n, dtype=D)
    for i in range(m):
        src = max((i + 0.5) * n / m - 0.5, 0.0)
        i0 = math.floor(src)
        i1, w = min(i0 + 1, n - 1), src - i0
        a[i, i0] += 1.0 - w
        a[i, i1] += w
    return a


def upsample_ref(x: torch.Tensor, size: int) -> torch.Tensor:
    a = bilinear_matrix(x.shape[-1], size)
    return (a @ x.double() @ a.T).to(x.dtype)


def test_noise_augmentation_noises_the_low_res_image_then_upsamples():
    """§2.4 at sampling: cond = Up(alpha_a x_low + sigma_a eps_low), eps_low ~ N(0, I) at the low resolution
    (drawn from the given generator), Up bilinear; and aug_level = a for every sample."""
    schedule, lam = CosineSchedule(), cosine_lambda(-20.0, 20.0)
    stage = SuperResolution(16, 8, GaussianAugmentation(schedule))
    lowres = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = 0.3
    inputs = stage.sampling_inputs(2, lowres, a, torch.Generator().manual_seed(5))
    eps_low = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    alpha, sigma = alpha_sigma(lam(a))
    want = upsample_ref(alpha * lowres.double() + sigma * eps_low.double(), 16)
    torch.testing.assert_close(inputs["lowres"].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inputs["aug_level"], torch.full((2,), a))


def test_training_noise_is_added_at_low_resolution_before_upsampling():
    """§2.4 at training: cond - alpha_a Up(Down(x)) = sigma_a Up(eps_low) lies in the range of the bilinear upsampler
    (noise added after upsampling would not), and eps_low recovered from it has unit variance."""
    schedule, lam = CosineSchedule(), cosine_lambda(-20.0, 20.0)
    stage = SuperResolution(16, 8, GaussianAugmentation(schedule))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    target, inputs = stage.training_inputs(images)
    assert torch.equal(target, images)
    levels = inputs["aug_level"].double()
    assert levels.shape == (4,) and ((levels >= 0) & (levels <= 1)).all()
    x_low = images.double().reshape(4, 3, 8, 2, 8, 2).mean(dim=(3, 5))  # area downsampling by 2, by hand
    a = bilinear_matrix(8, 16)
    a_pinv = torch.linalg.pinv(a)
    eps_low = []
    for b in range(4):
        alpha, sigma = alpha_sigma(lam(levels[b].item()))
        resid = inputs["lowres"][b].double() - alpha * (a @ x_low[b] @ a.T)
        e = a_pinv @ resid @ a_pinv.T  # least-squares low-res field
        torch.testing.assert_close(a @ e @ a.T, resid, rtol=1e-4, atol=1e-4)
        eps_low.append(e / sigma)
    eps_low = torch.stack(eps_low)
    assert 0.8 < eps_low.std().item() < 1.2 and abs(eps_low.mean().item()) < 0.2


@pytest.mark.parametrize(
    "sampler", [DDIMSampler(steps=3), AncestralSampler(steps=3, gamma=0.3)], ids=["ddim", "ancestral"]
)
def test_guidance_keeps_the_augmented_low_res_image_and_level_in_the_unconditional_pass(sampler):
    """§2.2 + §2.4: with w != 1, the unconditional pass sees the same noise-augmented low-res image and aug_level as
    the conditional one (only the text is dropped), at every step, and they are the ones drawn once per sample."""
    schedule, lam = CosineSchedule(), cosine_lambda(-20.0, 20.0)
    stage = SuperResolution(16, 8, GaussianAugmentation(schedule))
    b, a = 2, 0.25
    lowres = torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator().manual_seed(4)
    inputs = stage.sampling_inputs(b, lowres, a, g)
    eps_low = torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    alpha, sigma = alpha_sigma(lam(a))
    cond_want = upsample_ref(alpha * lowres.double() + sigma * eps_low.double(), 16)
    net = AffineNet(torch.zeros(3, 16, 16), scale=0.1)
    emb, mask = torch.randn(b, 3, 4), torch.ones(b, 3, dtype=torch.bool)
    den = GuidedDenoiser(net, schedule, EpsPrediction(), emb, mask, 5.0, NoThresholding(), **inputs)
    sampler(den, schedule, torch.randn(b, 3, 16, 16, generator=g), g)
    assert len(net.calls) == 3
    for call in net.calls:
        assert call["z"].shape[0] == 2 * b and torch.equal(call["z"][:b], call["z"][b:])
        assert torch.equal(call["emb"][:b], emb) and (call["emb"][b:] == 0).all() and not call["mask"][b:].any()
        for half in (call["lowres"][:b], call["lowres"][b:]):
            torch.testing.assert_close(half.double(), cond_want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(call["aug_level"], torch.full((2 * b,), a))
