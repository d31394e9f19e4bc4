"""q_theta with a variance: drawing x0_hat ~ N(mean, Sigma_t) in ``posterior``, ``invert`` and
``refresh(eta)`` gives exactly Analytic-DPM's step variances (Bao et al. 2022), checked against their
code's closed forms written here independently in Ho et al.'s notation (alpha_bar = a^2), in distribution
(Monte-Carlo mean and variance per step) and in closed form."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.plugins.blur import BlurCorruption


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Constant(torch.nn.Module):
    """A 'network' predicting x_0 = c for every input (prediction='x0')."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float64))

    def forward(self, x, t):
        return self.c.expand_as(x)


def bao_step(rule, abar_t, abar_s, cov_x0, eta=1.0):
    """(coefficient of x_t, coefficient of x0_hat, step variance) from Analytic-DPM's code
    (``reverse_ddpm_ms_eps`` / ``reverse_ddim_ms_eps``), in Ho's notation."""
    cum_beta_t, cum_beta_s = 1 - abar_t, 1 - abar_s
    skip_alpha = abar_t / abar_s
    skip_beta = 1 - skip_alpha
    if rule == "posterior":
        kx = math.sqrt(skip_alpha) * cum_beta_s / cum_beta_t
        k0 = math.sqrt(abar_s) * skip_beta / cum_beta_t
        return kx, k0, skip_beta * cum_beta_s / cum_beta_t + abar_s * skip_beta**2 / cum_beta_t**2 * cov_x0
    lamb2 = (eta**2 * skip_beta * cum_beta_s / cum_beta_t) if rule == "refresh" else 0.0
    kx = math.sqrt((cum_beta_s - lamb2) / cum_beta_t)
    k0 = math.sqrt(abar_s) - math.sqrt((cum_beta_s - lamb2) * abar_t / cum_beta_t)
    return kx, k0, lamb2 + k0**2 * cov_x0


RULES = [("posterior", {}), ("invert", {}), ("refresh", {"eta": 1.0}), ("refresh", {"eta": 0.4})]


@pytest.mark.parametrize("rule,opts", RULES, ids=["posterior", "invert", "refresh1", "refresh04"])
@pytest.mark.parametrize("cov", [0.0, 0.05, 0.3])
def test_one_step_moments_match_analytic_dpm(rule, opts, cov):
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="x0")
    time = reg.create("time", "discrete", steps=1000)
    t, s = 0.6, 0.45
    grid = torch.tensor([t, s, 0.0], dtype=torch.float64)
    n, d = 40000, 2
    x_t = torch.tensor([0.7, -1.2], dtype=torch.float64).expand(n, d).contiguous()
    mu = torch.tensor([0.3, 0.5], dtype=torch.float64)
    table = udm.VarianceTable(times=[t, s], values=[cov, cov])
    den = udm.Denoiser(Constant(mu), corr, time, variance=table if cov > 0 else None)
    states = []
    reg.get("sampler", rule)(den, corr, grid, x_t, generator=gen(1), callback=lambda st: states.append(st.x), **opts)
    x_s = states[0]
    sched = corr.schedule(torch.tensor([t, s], dtype=torch.float64))
    abar_t, abar_s = float(sched.alpha[0]) ** 2, float(sched.alpha[1]) ** 2
    kx, k0, var = bao_step(rule, abar_t, abar_s, cov, opts.get("eta", 1.0))
    mean = kx * x_t[0] + k0 * mu
    se_mean = math.sqrt(max(var, 1e-30) / n)
    assert float((x_s.mean(0) - mean).abs().max()) < 5 * se_mean + 1e-12
    if var > 0:
        # sample variance of n normal draws has relative sd sqrt(2/(n-1))
        rel = (x_s.var(0) / var - 1).abs().max()
        assert float(rel) < 5 * math.sqrt(2 / (n - 1))
    else:
        assert float(x_s.var(0).max()) < 1e-20
    # and in closed form: the layer's own coefficients give the same gamma and variance
    ms = corr.marginals(torch.tensor([t, s], dtype=torch.float64), x_t[:1])
    if rule == "posterior":
        kx_, k0_, std = corr.posterior_coefficients(ms[0], ms[1])
        gamma, base = float(k0_), float(std) ** 2
    else:
        keep, r = corr.refresh_amounts(ms[0], ms[1], opts.get("eta", 0.0))
        at, st, as_, ss = (float(v) for v in (ms[0].a64, ms[0].s64, ms[1].a64, ms[1].s64))
        gamma, base = as_ - ss * float(keep) * at / st, ss**2 * float(r) ** 2
    assert abs(gamma - k0) < 1e-12 and abs(base + gamma**2 * cov - var) < 1e-12


def test_variance_table_must_match_the_sampling_grid():
    table = udm.VarianceTable(times=[0.6, 0.45], values=[0.1, 0.1])
    with pytest.raises(udm.ConfigError, match=r"variance table: sampling time t = 0.5 must be one of the table's 2 "
                                              r"times.*interpolate=True"):
        table(torch.full((3,), 0.5, dtype=torch.float64), torch.zeros(3, 2))
    interp = udm.VarianceTable(times=[0.6, 0.4], values=[0.1, 0.3], interpolate=True)
    assert torch.allclose(interp(torch.full((2,), 0.5, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)),
                          torch.full((2, 1), 0.2, dtype=torch.float64))
    with pytest.raises(udm.ConfigError, match=r"variance table: values must be finite and >= 0; got min -0.1"):
        udm.VarianceTable(times=[0.5], values=[-0.1])


def test_variance_needs_a_gaussian_linear_corruption():
    reg = udm.registry()
    mask = reg.create("corruption", "mask", vocab_size=4)
    time = reg.create("time", "discrete", steps=10)
    with pytest.raises(udm.CapabilityError, match=r"denoiser: a variance source needs a Gaussian q_theta; got family "
                                                  r"'categorical'"):
        udm.Denoiser(torch.nn.Identity(), mask, time, variance=udm.VarianceTable([0.5], [0.1]))


def test_per_frequency_variance_is_drawn_in_the_dct_basis():
    """A per-coefficient Sigma for blur: x0_hat - mean has covariance diag(Sigma) in the DCT basis."""
    c = BlurCorruption(noise="vp", sigma=0.5)
    h = w = 4
    sig = torch.linspace(0.01, 0.2, h * w, dtype=torch.float64).reshape(1, 1, h, w)
    table = udm.VarianceTable(times=[0.5], values=sig)
    den = udm.Denoiser(Constant(torch.zeros(1, 1, h, w, dtype=torch.float64)), c,
                       udm.registry().create("time", "continuous"), variance=table)
    x_t = torch.zeros(20000, 1, h, w, dtype=torch.float64)
    pred = den.predict(x_t, torch.full((20000,), 0.5, dtype=torch.float64), gen(3))
    coef = c.to_basis(pred.x0_hat)
    got = coef.var(0)
    assert float((got / sig[0] - 1).abs().max()) < 6 * math.sqrt(2 / 20000)
    assert torch.equal(pred.mean, torch.zeros_like(pred.mean))


def test_last_step_returns_the_mean_not_a_draw():
    """With a variance source x0_hat is drawn on every step but the last, which returns q_theta's mean."""
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="x0")
    time = reg.create("time", "discrete", steps=1000)
    mu = torch.tensor([0.3, 0.5], dtype=torch.float64)
    grid = time.grid(5)
    table = udm.VarianceTable(times=grid[:-1], values=torch.full((5,), 0.2, dtype=torch.float64))
    den = udm.Denoiser(Constant(mu), corr, time, variance=table)
    drawn = []
    out = reg.get("sampler", "ddim")(den, corr, grid, torch.zeros(64, 2, dtype=torch.float64), generator=gen(0),
                                     callback=lambda st: drawn.append(st.x0_hat))
    assert torch.equal(out, mu.expand(64, 2))
    assert float((drawn[0] - mu).std()) > 0.3  # the earlier predictions were draws (std sqrt(0.2))
