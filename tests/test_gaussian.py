"""The ``gaussian`` corruption against closed forms written independently here: the DDPM linear table,
cosine, VP, VE and flow amplitudes and their derivatives, the noise posterior, the DDPM posterior
(Ho et al. 2020, eq. 6-7) on strided steps, the prior and the constructor's errors."""

from __future__ import annotations

import math

import pytest
import torch

import udm

from udm.errors import ConfigError

SCHEDULES = ["linear", "cosine", "vp", "ve", "flow"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ddpm_alpha_bar(T=1000, beta_start=1e-4, beta_end=0.02) -> torch.Tensor:
    """alpha_bar_n, n = 0..T (alpha_bar_0 = 1), Ho et al. 2020."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def closed_form(schedule: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) with udm's default parameters, float64."""
    if schedule == "cosine":
        s = 0.008
        f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        abar = f(t) / f(torch.zeros_like(t))
        return abar.sqrt(), (1 - abar).sqrt()
    if schedule == "vp":
        a = torch.exp(-0.1 * t / 2 - (20 - 0.1) * t**2 / 4)
        return a, (1 - a * a).sqrt()
    if schedule == "ve":
        return torch.ones_like(t), (0.01**2 * ((50 / 0.01) ** (2 * t) - 1)).sqrt()
    if schedule == "flow":
        return 1 - t, t
    raise AssertionError(schedule)


@pytest.fixture(scope="module")
def make(reg):
    return lambda **kw: reg.create("corruption", "gaussian", **kw)


def test_linear_schedule_equals_the_ddpm_table_at_every_step(make):
    corr = make(schedule="linear")
    abar = ddpm_alpha_bar()
    t = torch.arange(1001, dtype=torch.float64) / 1000
    sch = corr.schedule(t)
    assert sch.alpha.dtype == torch.float64
    assert sch.alpha[0] == 1.0 and sch.sigma[0] == 0.0
    assert float((sch.alpha - abar.sqrt()).abs().max()) < 1e-12
    assert float((sch.sigma - (1 - abar).sqrt()).abs().max()) < 1e-12
    # a short, steep table takes the exact lgamma branch
    short = make(schedule={"name": "linear", "steps": 10, "beta_start": 0.1, "beta_end": 0.5})
    tab = ddpm_alpha_bar(10, 0.1, 0.5)
    s = short.schedule(torch.arange(11, dtype=torch.float64) / 10)
    assert float((s.alpha - tab.sqrt()).abs().max()) < 1e-12
    assert float((s.sigma - (1 - tab).sqrt()).abs().max()) < 1e-12
    # in between the integers the continuous extension is monotone
    fine = corr.schedule(torch.linspace(0, 1, 4001, dtype=torch.float64))
    assert bool((fine.alpha.diff() < 0).all()) and bool((fine.sigma.diff() > 0).all())


@pytest.mark.parametrize("schedule", ["cosine", "vp", "ve", "flow"])
def test_schedules_match_closed_forms(make, schedule):
    corr = make(schedule=schedule)
    t = torch.linspace(0, 0.99, 100, dtype=torch.float64)
    a, s = closed_form(schedule, t)
    sch = corr.schedule(t)
    assert torch.allclose(sch.alpha, a, rtol=1e-12, atol=1e-12)
    assert torch.allclose(sch.sigma, s, rtol=1e-10, atol=1e-12)
    assert sch.alpha[0] == 1.0 and sch.sigma[0] == 0.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_derivatives_match_finite_differences(make, schedule):
    corr = make(schedule=schedule)
    t = torch.linspace(0.02, 0.97, 40, dtype=torch.float64)
    h = 1e-6
    sch, up, down = corr.schedule(t), corr.schedule(t + h), corr.schedule(t - h)
    fd_a = (up.alpha - down.alpha) / (2 * h)
    fd_s = (up.sigma - down.sigma) / (2 * h)
    assert torch.allclose(sch.dalpha, fd_a, rtol=1e-6, atol=1e-7)
    assert torch.allclose(sch.dsigma, fd_s, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_forward_noise_posterior_and_t0_identity(make, schedule, dtype):
    corr = make(schedule=schedule)
    x0 = torch.randn(64, 3, 4, generator=gen(0), dtype=dtype)
    eps = corr.sample_noise(x0, gen(1))
    assert eps.shape == x0.shape and eps.dtype == dtype
    if schedule == "linear":  # on the table's integer steps
        n = torch.randint(1, 1001, (64,), generator=gen(2))
        t = n.to(torch.float64) / 1000
        a, s = ddpm_alpha_bar()[n].sqrt(), (1 - ddpm_alpha_bar()[n]).sqrt()
    else:
        t = torch.rand(64, generator=gen(2), dtype=torch.float64) * 0.9 + 0.05
        a, s = closed_form(schedule, t)
    xt = corr.forward(x0, eps, t)
    assert xt.dtype == dtype
    expect = a.to(dtype)[:, None, None] * x0 + s.to(dtype)[:, None, None] * eps
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(xt, expect, atol=tol * 10, rtol=tol)
    back = corr.noise_posterior(xt, x0, t)
    assert torch.allclose(back, eps, atol=1e-4 if dtype == torch.float32 else 1e-10)
    assert torch.equal(corr.forward(x0, eps, torch.zeros(64, dtype=torch.float64)), x0)


def test_ddpm_posterior_on_strided_steps(make):
    """Ho et al. eq. 6-7 with s < t strided: alpha_ts = abar_t / abar_s, beta_ts = 1 - alpha_ts,
    mean = sqrt(abar_s) beta_ts / (1 - abar_t) x0 + sqrt(alpha_ts) (1 - abar_s) / (1 - abar_t) x_t,
    var = beta_ts (1 - abar_s) / (1 - abar_t). The plugin draws one z ~ N(0, I) shaped like x_t."""
    corr = make(schedule="linear")
    abar = ddpm_alpha_bar()
    n_t = torch.tensor([1000, 700, 51, 2, 20])
    n_s = torch.tensor([900, 500, 50, 1, 0])
    x0 = torch.randn(5, 2, generator=gen(0), dtype=torch.float64)
    xt = torch.randn(5, 2, generator=gen(1), dtype=torch.float64)
    got = corr.posterior(xt, x0, n_t / 1000.0, n_s / 1000.0, gen(7))
    at, as_ = abar[n_t][:, None], abar[n_s][:, None]
    a_ts = at / as_
    b_ts = 1 - a_ts
    mean = as_.sqrt() * b_ts / (1 - at) * x0 + a_ts.sqrt() * (1 - as_) / (1 - at) * xt
    var = b_ts * (1 - as_) / (1 - at)
    z = torch.randn(xt.shape, generator=gen(7), dtype=torch.float64)
    assert torch.allclose(got, mean + var.sqrt() * z, atol=1e-12)
    assert torch.allclose(got[-1], x0[-1], atol=1e-12)  # s = 0: the posterior is a point mass at x0


def test_posterior_moments_statistically(make):
    """The same posterior by its moments over many draws (convention-free check of the noise scale)."""
    corr = make(schedule="cosine")
    n = 40000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    xt = torch.full((n, 1), -0.3, dtype=torch.float64)
    t, s = torch.full((n,), 0.6, dtype=torch.float64), torch.full((n,), 0.35, dtype=torch.float64)
    draws = corr.posterior(xt, x0, t, s, gen(3))
    (at, st), (as_, ss) = closed_form("cosine", t[:1]), closed_form("cosine", s[:1])
    a_ts = at / as_
    var_ts = st**2 - a_ts**2 * ss**2
    mean = float(a_ts * ss**2 / st**2 * -0.3 + as_ * var_ts / st**2 * 0.7)
    var = float(var_ts * ss**2 / st**2)
    se = math.sqrt(var / n)
    assert abs(float(draws.mean()) - mean) < 5 * se
    assert abs(float(draws.var()) / var - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_prior_scale_and_determinism(make, schedule):
    corr = make(schedule=schedule)
    x = corr.sample_prior((20000, 2), gen(4))
    assert x.dtype == torch.float32 and x.shape == (20000, 2)
    sigma1 = float(closed_form(schedule, torch.ones(1, dtype=torch.float64))[1]) if schedule != "linear" else \
        math.sqrt(1 - float(ddpm_alpha_bar()[-1]))
    assert abs(float(x.std()) / sigma1 - 1) < 5 * math.sqrt(1 / (2 * 40000))
    assert torch.equal(x, corr.sample_prior((20000, 2), gen(4)))
    assert corr.sample_prior((3, 2), gen(4), dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_target_and_to_x0_round_trip(make, prediction):
    corr = make(schedule="vp", prediction=prediction)
    x0 = torch.randn(32, 2, generator=gen(0), dtype=torch.float64)
    eps = torch.randn(32, 2, generator=gen(1), dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 32, dtype=torch.float64)
    xt = corr.forward(x0, eps, t)
    assert torch.allclose(corr.to_x0(corr.target(x0, eps, t), xt, t), x0, atol=1e-9)
    assert corr.loss_weight(t) is None  # weighting "none" is the default


def test_constructor_errors(make):
    with pytest.raises(udm.UnknownPluginError, match=r"corruption gaussian: schedule: schedule 'cosin': name must be a registered "
                                          r"schedule; got 'cosin'\. Available: cosine, flow, linear, table, ve, vp\. "
                                          r"Did you mean 'cosine'\?"):
        make(schedule="cosin")
    with pytest.raises(ConfigError, match=r"corruption 'gaussian': prediction must be one of 'x0', 'eps', 'v', 'score', "
                                          r"'flow'; got 'epsilon'"):
        make(prediction="epsilon")
    with pytest.raises(ConfigError, match=r"corruption 'gaussian': weighting must be one of .*'min_snr'.*; "
                                          r"got 'min-snr'"):
        make(weighting="min-snr")
    with pytest.raises(ConfigError, match=r"corruption 'gaussian': schedule must be a registered schedule name or a "
                                          r"mapping \{name: <schedule>, <options>\}; got \{'steps': 10\}"):
        make(schedule={"steps": 10})
    from udm.plugins.gaussian import GaussianCorruption  # the class itself (no registry check first)
    with pytest.raises(ConfigError, match=r"corruption gaussian: schedule: a schedule given as a mapping must have a "
                                          r"`name` key"):
        GaussianCorruption(schedule={"steps": 10})
    with pytest.raises(ConfigError, match=r"corruption gaussian: schedule: schedule 'linear': keyword arguments must "
                                          r"match its signature"):
        make(schedule={"name": "linear", "beta_max": 0.02})


def test_schedule_instances_and_mappings_are_accepted(make, reg):
    sched = reg.create("schedule", "vp", beta_min=0.2, beta_max=10.0)
    a = make(schedule=sched)
    b = make(schedule={"name": "vp", "beta_min": 0.2, "beta_max": 10.0})
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert a.noise_schedule is sched and torch.equal(a.schedule(t).alpha, b.schedule(t).alpha)


def test_schedule_accepts_expanded_time_tensors(make):
    """Samplers hand user denoisers broadcast time tensors: corruption.schedule must take them."""
    for schedule in SCHEDULES:
        corr = make(schedule=schedule)
        t = torch.tensor([0.5], dtype=torch.float64).expand(4)
        s = corr.schedule(t)
        assert s.alpha.shape == (4,) and s.dalpha.shape == (4,)
        x = torch.zeros(4, 2)
        assert corr.forward(x, x, t).shape == (4, 2)
