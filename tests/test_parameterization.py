"""Prediction targets and loss weightings (udm.Parameterization) and what the linear-Gaussian layer derives
for the ``gaussian`` corruption: exact conversions, weightings checked as x0-equivalent weights, the score,
the SDE coefficients, the DDIM-eta refresh amounts, the singularity guard and the derived training loss."""

from __future__ import annotations

import math

import pytest
import torch

import udm

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


def _safe(schedule):
    """The predictions that are non-singular on each schedule (eps/score divide by alpha -> 0)."""
    return ["x0", "v", "flow"] if schedule in ("cosine", "flow") else ["x0", "eps", "v", "score", "flow"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_targets_are_the_papers_and_round_trip(make, schedule):
    for prediction in _safe(schedule):
        corr = make(schedule=schedule, prediction=prediction)
        x0, eps, t, s = _batch(corr)
        a, sg, da, ds = (v[:, None] for v in (s.alpha, s.sigma, s.dalpha, s.dsigma))
        xt = corr.forward(x0, eps, t)
        assert torch.allclose(xt, a * x0 + sg * eps, atol=1e-12)
        want = {"x0": x0, "eps": eps, "v": (a * eps - sg * x0) / (a * a + sg * sg).sqrt(),  # Salimans & Ho, / r
                "score": -eps / sg, "flow": da * x0 + ds * eps}[prediction]
        assert torch.allclose(corr.target(x0, eps, t), want, atol=1e-10), prediction
        assert torch.allclose(corr.to_x0(want, xt, t), x0, atol=1e-8), prediction


def test_flow_target_is_dx_dt():
    """The flow velocity is d x_t / dt at fixed (x_0, eps), by finite differences (any schedule)."""
    corr = udm.registry().create("corruption", "gaussian", schedule="cosine", prediction="flow")
    x0, eps, t, _ = _batch(corr)
    h = 1e-6
    fd = (corr.forward(x0, eps, t + h) - corr.forward(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(corr.target(x0, eps, t), fd, atol=1e-7)


def test_score_matches_a_gaussian_closed_form(make):
    """x0 ~ N(0, I): x_t ~ N(0, (a^2 + s^2) I), score = -x_t / (a^2 + s^2), E[x0 | x_t] = a x_t / (a^2 + s^2)."""
    for schedule in SCHEDULES:
        corr = make(schedule=schedule)
        t = torch.tensor([0.37], dtype=torch.float64)
        xt = torch.randn(64, 3, generator=gen(9), dtype=torch.float64)
        m = corr.marginal(t, xt)
        var = float(m.a64) ** 2 + float(m.s64) ** 2
        assert torch.allclose(corr.score(m, xt, float(m.a64) * xt / var), -xt / var, atol=1e-10)


LAMBDA = {  # the intended weight on the x0 squared error, as a function of SNR
    "x0": lambda r, g: torch.ones_like(r),
    "eps": lambda r, g: r,
    "v": lambda r, g: r + 1,
    "min_snr": lambda r, g: r.clamp(max=g),
    "truncated_snr": lambda r, g: r.clamp(min=1.0),
}


#: x0 prediction with an x0-space weight unbounded as sigma -> 0 is refused (tested below)
PAIRS = [(p, w) for p in ("x0", "eps", "v", "score") for w in LAMBDA
         if not (p == "x0" and w in ("eps", "v", "truncated_snr"))]


@pytest.mark.parametrize("schedule", ["linear", "ve"])
@pytest.mark.parametrize("prediction,weighting", PAIRS)
def test_training_loss_realises_the_x0_weighting(make, schedule, prediction, weighting):
    """training_loss(out) == lambda(t) * ||x0_hat(out) - x0||^2 for any network output."""
    corr = make(schedule=schedule, prediction=prediction, weighting=weighting, gamma=3.0)
    x0, eps, t, s = _batch(corr)
    xt = corr.forward(x0, eps, t)
    out = corr.target(x0, eps, t) + 0.3 * torch.randn(x0.shape, generator=gen(5), dtype=torch.float64)
    loss = corr.training_loss(out, x0, eps, xt, t)
    x0_err = (corr.to_x0(out, xt, t) - x0).square().mean(1)
    snr = (s.alpha / s.sigma) ** 2
    lam = LAMBDA[weighting](snr, 3.0)
    assert torch.allclose(loss, lam * x0_err, rtol=1e-8)


def test_weighting_none_is_plain_mse(make):
    corr = make(prediction="eps")
    x0, eps, t, _ = _batch(corr)
    out = torch.randn(x0.shape, generator=gen(3), dtype=torch.float64)
    assert torch.allclose(corr.training_loss(out, x0, eps, corr.forward(x0, eps, t), t), (out - eps).square().mean(1))


def test_singular_parameterisations_are_refused_with_the_safe_choices(make):
    with pytest.raises(udm.ConfigError, match=r"corruption gaussian: prediction/weighting must be non-singular on the "
                                              r"schedule's whole range; got eps/none, where the x_0 conversion divides "
                                              r"by a at t = 1\. Safe choices for this schedule \(prediction/weighting\): "
                                              r"x0/none, .*v/none"):
        make(schedule="cosine", prediction="eps")
    with pytest.raises(udm.ConfigError, match=r"got score/none, where the x_0 conversion divides by a at t = 1"):
        make(schedule="flow", prediction="score")
    for weighting in ("eps", "v", "truncated_snr"):  # x0-space weights SNR, SNR + 1, max(SNR, 1): unbounded at t -> 0
        with pytest.raises(udm.ConfigError, match=rf"got x0/{weighting}, where the loss weight grows without bound "
                                                  r"at t = 1e-09"):
            make(schedule="linear", prediction="x0", weighting=weighting)
    make(schedule="linear", prediction="eps")  # the DDPM default is fine: alpha_1 = 0.006


def test_parameterisation_names_are_checked():
    with pytest.raises(udm.ConfigError, match=r"parameterisation: prediction must be one of x0, eps, v, score, flow; "
                                              r"got 'epsilon'"):
        udm.Parameterization("epsilon")
    with pytest.raises(udm.ConfigError, match=r"weighting must be one of .*; got 'min-snr'\. Did you mean 'min_snr'\?"):
        udm.Parameterization("v", "min-snr")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sde_coefficients(make, schedule):
    """f = d ln(alpha)/dt, g^2 = alpha^2 d/dt(sigma^2 / alpha^2), by finite differences; and the SDE's
    variance ODE d(sigma^2)/dt = 2 f sigma^2 + g^2 holds."""
    corr = make(schedule=schedule)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    f, g2 = corr.sde(corr.marginal(t, torch.zeros(19, 1)))
    f, g2 = f.reshape(-1), g2.reshape(-1)
    up, down = corr.schedule(t + h), corr.schedule(t - h)
    fd_f = (up.alpha.log() - down.alpha.log()) / (2 * h)
    ratio = lambda s: (s.sigma / s.alpha) ** 2  # noqa: E731
    a = corr.schedule(t).alpha
    fd_g2 = a**2 * (ratio(up) - ratio(down)) / (2 * h)
    assert torch.allclose(f, fd_f, rtol=1e-6, atol=1e-8)
    assert torch.allclose(g2, fd_g2, rtol=1e-5, atol=1e-8)
    sig = corr.schedule(t).sigma
    assert torch.allclose((up.sigma**2 - down.sigma**2) / (2 * h), 2 * f * sig**2 + g2, rtol=1e-5, atol=1e-8)


def test_vp_sde_is_the_score_sde_vp(make):
    """VP (Song et al. 2021): f = -beta(t)/2, g^2 = beta(t), beta(t) = beta_min + t (beta_max - beta_min)."""
    corr = make(schedule={"name": "vp", "beta_min": 0.1, "beta_max": 20.0})
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    f, g2 = (v.reshape(-1) for v in corr.sde(corr.marginal(t, torch.zeros(50, 1))))
    beta = 0.1 + t * 19.9
    assert torch.allclose(f, -beta / 2, atol=1e-10)
    assert torch.allclose(g2, beta, atol=1e-10)


def test_refresh_amounts_are_the_ddim_eta_sigma(make):
    """sigma_s * r = eta * sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (DDIM eq. 16), and the
    kept fraction sqrt(1 - r^2) is formed without cancellation (it is sqrt(SNR_t/SNR_s) at eta = 1)."""
    corr = make(schedule="linear")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
    like = torch.zeros(1, 2)
    for n_t, n_s in ((1000, 800), (600, 300), (40, 39)):
        mt, ms = corr.marginals(torch.tensor([n_t / 1000, n_s / 1000], dtype=torch.float64), like)
        at, as_ = abar[n_t], abar[n_s]
        for eta in (0.0, 0.5, 1.0):
            keep, r = corr.refresh_amounts(mt, ms, eta)
            ddim_sigma = eta * ((1 - as_) / (1 - at)).sqrt() * (1 - at / as_).sqrt()
            assert torch.allclose(ms.s64 * r, ddim_sigma, atol=1e-12)
            assert torch.allclose(keep**2 + r**2, torch.ones(()).double(), atol=1e-14)
    # a tiny SNR ratio (cosine's first step from t = 1): float32 1 - r^2 would round to 0
    cos = make(schedule="cosine")
    mt, ms = cos.marginals(torch.tensor([1 - 1e-4, 0.9], dtype=torch.float64), like)
    keep, _ = cos.refresh_amounts(mt, ms, 1.0)
    snr = lambda m: (m.a64 / m.s64) ** 2  # noqa: E731
    want = (snr(mt) / snr(ms)).sqrt()
    assert float(want) < 1e-3 and float(keep) > 0 and torch.allclose(keep, want, rtol=1e-12, atol=0)


def test_diffusion_loss_composes_time_noise_target_and_weight(make, reg):
    """LossOutput.per_sample = weight(t) * mean((net(x_t, enc(t)) - target)^2) with t, eps drawn in that order."""
    corr = make(schedule="linear", prediction="eps", weighting="min_snr", gamma=5.0)
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
    assert math.isclose(float(out.loss.detach()), float((weight * mse).mean()), rel_tol=1e-10)
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
