"""Equivalence with Analytic-DPM on Gaussian mixtures with the exact oracle (1-D and 64-D): every rule with x0_hat
drawn from q_theta = N(E[x0 | x_t], Sigma_t) takes, at every step of a 10-step grid, Bao et al.'s step
(``reverse_ddpm_ms_eps`` / ``reverse_ddim_ms_eps`` of the Analytic-DPM code, written here independently in Ho's
notation: alpha_bar = a^2, the mean through eps_pred) in mean (per x_t) and variance; and the analytic fit is
their ms_eps formula, cov_x0 = (1 - alpha_bar)/alpha_bar (1 - ms_eps)."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.testing import GaussianMixture

RULES = [("posterior", {}), ("invert", {}), ("refresh", {"eta": 1.0}), ("refresh", {"eta": 0.5})]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def bao_step(rule, eta, abar_t, abar_s, x_t, x0_pred, cov_x0):
    """(mean, variance) of x_s from Analytic-DPM's code for one step t -> s."""
    skip_alpha = abar_t / abar_s
    skip_beta = 1 - skip_alpha
    eps_pred = (x_t - math.sqrt(abar_t) * x0_pred) / math.sqrt(1 - abar_t)
    if rule == "posterior":  # reverse_ddpm_ms_eps: the posterior mean from x0_pred, sigma2_small + offset
        coeff1 = skip_beta * math.sqrt(abar_s) / (1 - abar_t)
        coeff2 = math.sqrt(skip_alpha) * (1 - abar_s) / (1 - abar_t)
        sigma2_small = skip_beta * (1 - abar_s) / (1 - abar_t)
        return coeff1 * x0_pred + coeff2 * x_t, sigma2_small + abar_s * skip_beta**2 / (1 - abar_t) ** 2 * cov_x0
    lamb2 = eta**2 * skip_beta * (1 - abar_s) / (1 - abar_t)  # reverse_ddim_ms_eps, eta = 0 for invert
    mean = math.sqrt(abar_s) * x0_pred + math.sqrt(1 - abar_s - lamb2) * eps_pred
    coeff_cov_x0 = (math.sqrt(abar_s) - math.sqrt((1 - abar_s - lamb2) * abar_t / (1 - abar_t))) ** 2
    return mean, lamb2 + coeff_cov_x0 * cov_x0


@pytest.fixture(scope="module")
def setup():
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time = reg.create("time", "discrete", steps=1000)
    return corr, time


@pytest.mark.filterwarnings("ignore:fit_variance. Gamma_t")
@pytest.mark.parametrize("dim", [1, 64])
def test_analytic_fit_is_bao_ms_eps_formula(setup, dim):
    corr, time = setup
    mix = GaussianMixture.random(4, dim, std=0.2, seed=dim)
    data = mix.sample(2000, gen(0), torch.float64)
    fit = udm.fit_variance(mix.denoiser(corr), corr, time, data, steps=10, samples=2000, generator=gen(1))
    abar = corr.schedule(fit.times).alpha ** 2
    cov_x0 = (1 - abar) / abar * (1 - fit.gamma)  # Bao's cov_x0 from ms_eps, before the clamp
    torch.testing.assert_close(fit.raw, cov_x0, rtol=1e-9, atol=1e-12)
    inside = (cov_x0 > 0) & (cov_x0 < fit.bound)
    torch.testing.assert_close(fit.table.values[inside], cov_x0[inside], rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule,opts", RULES, ids=["posterior", "invert", "refresh1", "refresh05"])
@pytest.mark.parametrize("dim,per_point", [(1, 10000), (64, 800)])
def test_every_step_with_a_sampled_x0_hat_is_analytic_dpm(setup, rule, opts, dim, per_point):
    """Steps 1..9 of a 10-step grid (the 10th returns the mean): per x_t the mean within 5 standard errors, the
    variance (pooled over the x_t and dimensions) within 5 of its relative standard error sqrt(2 / (N - 1))."""
    corr, time = setup
    mix = GaussianMixture.random(4, dim, std=0.2, seed=dim)
    grid = time.grid(10)
    exact = udm.fit_variance(None, corr, time, source="exact", oracle=mix, steps=10, samples=2000, generator=gen(2))
    den = mix.q_theta(corr, exact.table)
    step_rule = udm.samplers.RULES[rule]
    eta = opts.get("eta", 0.0)
    points = 3
    for i in range(len(grid) - 2):
        t, s = float(grid[i]), float(grid[i + 1])
        abar_t, abar_s = (float(corr.schedule(torch.tensor([v], dtype=torch.float64)).alpha) ** 2 for v in (t, s))
        base = mix.sample(points, gen(10 + i), torch.float64) * math.sqrt(abar_t) + \
            math.sqrt(1 - abar_t) * torch.randn(points, dim, generator=gen(20 + i), dtype=torch.float64)
        x_t = base.repeat_interleave(per_point, 0)
        states = []
        step_rule(den, corr, torch.tensor([t, s, 0.0], dtype=torch.float64), x_t, generator=gen(30 + i),
                  callback=lambda st: states.append(st.x), **opts)
        x_s = states[0].reshape(points, per_point, dim)
        x0_pred = mix.posterior(base, corr, torch.full((points,), t, dtype=torch.float64)).mean
        cov_x0 = float(exact.table.lookup(torch.tensor([t], dtype=torch.float64))[0])
        mean, var = bao_step(rule, eta, abar_t, abar_s, base, x0_pred, cov_x0)
        z = (x_s.mean(1) - mean).abs() / math.sqrt(var / per_point)
        assert float(z.max()) < 5, (i, rule, float(z.max()))
        n = points * per_point * dim
        got = float(((x_s - mean[:, None]) ** 2).mean())
        assert abs(got / var - 1) < 5 * math.sqrt(2 / (n - 1)), (i, rule, got, var)
