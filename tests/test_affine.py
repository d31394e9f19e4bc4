"""What the core derives for an affine Gaussian corruption: x0/eps/v/score conversions, loss weightings
(checked as x0-equivalent weights), the SDE coefficients of MATH.md eq. 3.5, the DDPM refresh amount,
and the derived training loss."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm import affine

SCHEDULES = ["linear", "cosine", "vp", "ve", "flow"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def make(reg):
    return lambda **kw: reg.create("corruption", "gaussian", **kw)


def _batch(corr, n=64, seed=0):
    x0 = torch.randn(n, 3, generator=gen(seed), dtype=torch.float64)
    eps = torch.randn(n, 3, generator=gen(seed + 1), dtype=torch.float64)
    t = torch.linspace(0.03, 0.97, n, dtype=torch.float64)
    return x0, eps, t, corr.schedule(t)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_conversions_round_trip(make, schedule):
    x0, eps, t, s = _batch(make(schedule=schedule))
    a, sg = s.alpha[:, None], s.sigma[:, None]
    xt = a * x0 + sg * eps
    assert torch.allclose(affine.x0_from_eps(xt, eps, s), x0, atol=1e-8)
    assert torch.allclose(affine.eps_from_x0(xt, x0, s), eps, atol=1e-8)
    v = affine.v_from_x0_eps(x0, eps, s)
    r = (a * a + sg * sg).sqrt()
    assert torch.allclose(v, (a * eps - sg * x0) / r, atol=1e-12)  # Salimans & Ho, normalised by r
    assert torch.allclose(affine.x0_from_v(xt, v, s), x0, atol=1e-8)
    assert torch.allclose(affine.eps_from_v(xt, v, s), eps, atol=1e-8)
    assert torch.allclose(affine.snr(s), s.alpha**2 / s.sigma**2)
    for pred in affine.PREDICTIONS:
        assert torch.allclose(affine.to_x0(pred, affine.target(pred, x0, eps, s), xt, s), x0, atol=1e-8)


def test_score_from_eps_matches_a_gaussian_closed_form(make):
    """x0 ~ N(0, I): x_t ~ N(0, (a^2 + s^2) I), score = -x_t / (a^2 + s^2), E[eps | x_t] = s x_t / (a^2 + s^2)."""
    for schedule in SCHEDULES:
        _, _, _, s = _batch(make(schedule=schedule))
        xt = torch.randn(64, 3, generator=gen(9), dtype=torch.float64)
        var = (s.alpha**2 + s.sigma**2)[:, None]
        eps_mean = s.sigma[:, None] * xt / var
        assert torch.allclose(affine.score_from_eps(eps_mean, s), -xt / var, atol=1e-10)


LAMBDA = {  # the intended weight on the x0 squared error, as a function of SNR
    "x0": lambda r, g: torch.ones_like(r),
    "eps": lambda r, g: r,
    "v": lambda r, g: r + 1,
    "min_snr": lambda r, g: r.clamp(max=g),
    "truncated_snr": lambda r, g: r.clamp(min=1.0),
}


@pytest.mark.parametrize("schedule", ["cosine", "ve"])
@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
@pytest.mark.parametrize("weighting", list(LAMBDA))
def test_loss_weight_realises_the_x0_weighting(make, schedule, prediction, weighting):
    """weight(t) * ||out - target||^2 == lambda(t) * ||x0_hat(out) - x0||^2 for any network output."""
    corr = make(schedule=schedule, prediction=prediction, weighting=weighting, gamma=3.0)
    x0, eps, t, s = _batch(corr)
    xt = corr.forward(x0, eps, t)
    out = corr.target(x0, eps, t) + 0.3 * torch.randn(x0.shape, generator=gen(5), dtype=torch.float64)
    pred_err = (out - corr.target(x0, eps, t)).square().mean(1)
    x0_err = (corr.to_x0(out, xt, t) - x0).square().mean(1)
    snr = (s.alpha / s.sigma) ** 2  # recomputed independently below from the schedule
    lam = LAMBDA[weighting](snr, 3.0)
    assert torch.allclose(corr.loss_weight(t) * pred_err, lam * x0_err, rtol=1e-8)


def test_weighting_none_is_plain_mse(make):
    corr = make(prediction="eps")
    assert corr.loss_weight(torch.rand(4, dtype=torch.float64)) is None
    assert affine.x0_loss_weight("none", "v", affine.AffineSchedule(torch.ones(2), torch.ones(2))) is None


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sde_coefficients_match_eq_3_5(make, schedule):
    """f = d ln(alpha)/dt, g^2 = alpha^2 d/dt(sigma^2 / alpha^2) (MATH.md eq. 3.5), by finite differences;
    and the SDE's variance ODE d(sigma^2)/dt = 2 f sigma^2 + g^2 holds."""
    corr = make(schedule=schedule)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    f, g2 = affine.sde_coefficients(corr.schedule(t))
    up, down = corr.schedule(t + h), corr.schedule(t - h)
    fd_f = (up.alpha.log() - down.alpha.log()) / (2 * h)
    ratio = lambda s: (s.sigma / s.alpha) ** 2  # noqa: E731
    a = corr.schedule(t).alpha
    fd_g2 = a**2 * (ratio(up) - ratio(down)) / (2 * h)
    assert torch.allclose(f, fd_f, rtol=1e-6, atol=1e-8)
    assert torch.allclose(g2, fd_g2, rtol=1e-5, atol=1e-8)
    sig = corr.schedule(t).sigma
    assert torch.allclose((up.sigma**2 - down.sigma**2) / (2 * h), 2 * f * sig**2 + g2, rtol=1e-5, atol=1e-8)


def test_vp_sde_is_the_score_sde_vp():
    """VP (Song et al. 2021): f = -beta(t)/2, g^2 = beta(t), beta(t) = beta_min + t (beta_max - beta_min)."""
    corr = udm.load_registry().create("corruption", "gaussian", schedule="vp", beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    f, g2 = affine.sde_coefficients(corr.schedule(t))
    beta = 0.1 + t * 19.9
    assert torch.allclose(f, -beta / 2, atol=1e-10)
    assert torch.allclose(g2, beta, atol=1e-10)
    with pytest.raises(ValueError, match=r"sde_coefficients: the schedule must carry dalpha and dsigma; got None\."):
        affine.sde_coefficients(affine.AffineSchedule(torch.ones(1), torch.ones(1)))


def test_ddpm_refresh_amount_is_the_ddim_eta_sigma(make):
    """sigma_s * a = eta * sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (DDIM eq. 16)."""
    corr = make(schedule="linear")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
    n_t, n_s = torch.tensor([1000, 600, 40]), torch.tensor([800, 300, 39])
    st, ss = corr.schedule(n_t / 1000.0), corr.schedule(n_s / 1000.0)
    for eta in (0.0, 0.5, 1.0):
        a = affine.ddpm_refresh_amount(st, ss, eta)
        at, as_ = abar[n_t], abar[n_s]
        ddim_sigma = eta * ((1 - as_) / (1 - at)).sqrt() * (1 - at / as_).sqrt()
        assert torch.allclose(ss.sigma * a, ddim_sigma, atol=1e-12)


def test_diffusion_loss_composes_time_noise_target_and_weight(make, reg):
    """LossOutput.per_sample = weight(t) * mean((net(x_t, enc(t)) - target)^2) with t, eps drawn in that order."""
    corr = make(schedule="cosine", prediction="eps", weighting="min_snr", gamma=5.0)
    time = reg.create("time", "discrete", steps=100)
    torch.manual_seed(0)
    net = udm.load_registry().create("model", "mlp", data_shape=[3], width=16, depth=1).double()
    x0 = torch.randn(16, 3, generator=gen(0), dtype=torch.float64)
    out = udm.diffusion_loss(net, corr, time, x0, gen(11))
    g = gen(11)
    t = time.sample_train(16, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s = corr.schedule(t)
    xt = s.alpha[:, None] * x0 + s.sigma[:, None] * eps
    with torch.no_grad():
        mse = (net(xt, 100 * t) - eps).square().mean(1)
    weight = (s.alpha**2 / s.sigma**2).clamp(max=5.0) / (s.alpha**2 / s.sigma**2)
    assert torch.equal(out.t, t)
    assert torch.allclose(out.per_sample, weight * mse, rtol=1e-10)
    assert math.isclose(float(out.loss), float((weight * mse).mean()), rel_tol=1e-10)
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
