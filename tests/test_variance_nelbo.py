"""The discrete chain's NELBO in closed form on Gaussian data, its ordering small > large > exact on a mixture (the
Analytic-DPM pattern), and the optimal trajectory: the dynamic program against brute force, its cost against the
paper's dp cost (equal up to terms that telescope), and ``spacing="optimal"`` in udm.sample."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.testing import GaussianMixture
from udm.variance import ClosedFormVariance
from udm.variance_trajectory import optimal_grid, optimal_trajectory, step_costs


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def parts():
    reg = udm.registry()
    return reg.create("corruption", "gaussian", schedule="linear", prediction="eps"), \
        reg.create("time", "discrete", steps=1000)


def gaussian_data(dim=3, mu=0.3, std=0.4):
    return GaussianMixture(torch.full((1, dim), mu), torch.tensor([std]), torch.ones(1))


# ------------------------------------------------------------------------------------------------------ NELBO
def test_one_step_nelbo_of_gaussian_data_in_closed_form(parts):
    """K = 1 (grid [1, 0]), data N(mu, v I), exact q_theta: NELBO/d = a_1^2 (v + mu^2) / (2 s_1^2) (prior KL)
    + 1/2 log(2 pi Sigma_1) + 1/2 (decoder), Sigma_1 = v s_1^2 / (a_1^2 v + s_1^2)."""
    corr, time = parts
    mix = gaussian_data()
    data = mix.sample(20000, gen(0), torch.float64)
    grid = torch.tensor([1.0, 0.0], dtype=torch.float64)
    exact = udm.fit_variance(None, corr, time, source="exact", oracle=mix, times=grid, samples=500)
    res = udm.discrete_nelbo(mix.q_theta(corr, exact.table), corr, grid, data, generator=gen(1))
    sch = corr.schedule(torch.ones(1, dtype=torch.float64))
    a2, s2, v, mu = float(sch.alpha) ** 2, float(sch.sigma) ** 2, 0.16, 0.3
    sigma1 = v * s2 / (a2 * v + s2)
    prior = a2 * (v + mu**2) / (2 * s2)
    decoder = 0.5 * math.log(2 * math.pi * sigma1) + 0.5
    assert abs(res.prior - prior) < 5 * a2 * 0.5 / s2 / math.sqrt(len(data))
    assert abs(res.nats_per_dim - (prior + decoder)) < 5 * res.stderr and res.stderr < 0.01
    assert res.steps == [] and abs(res.decoder - decoder) < 5 * res.stderr


def test_each_step_kl_is_half_log_of_the_variance_ratio(parts):
    """Exact mean and Sigma = Cov[x0 | x_t] (constant for Gaussian data): E KL_step = d/2 log(1 + k_0^2 Sigma / std^2)."""
    corr, time = parts
    mix = gaussian_data(dim=2)
    data = mix.sample(20000, gen(2), torch.float64)
    grid = time.grid(5)
    exact = udm.fit_variance(None, corr, time, source="exact", oracle=mix, steps=5, samples=500)
    res = udm.discrete_nelbo(mix.q_theta(corr, exact.table), corr, grid, data, generator=gen(3))
    ms = corr.marginals(grid, data[:1])
    for i, got in enumerate(res.steps):
        _, k0, std = corr.posterior_coefficients(ms[i], ms[i + 1])
        sig = float(exact.table.lookup(grid[i:i + 1]))
        want = 0.5 * math.log(1 + float(k0) ** 2 * sig / float(std) ** 2)
        assert abs(got - want) < 0.02 * want + 1e-4, (i, got, want)


@pytest.mark.filterwarnings("ignore:fit_variance. Gamma_t")
def test_nelbo_orders_small_large_exact_like_analytic_dpm(parts):
    """On a mixture at K = 10 (grid from t = 1/T, a shared decoder variance as in Bao et al.): NELBO - H is >= 0 for
    every choice and small (beta_tilde) > large (beta) > 2 analytic, analytic ~ exact (benchmarks: 7.4x at K = 10, d = 16)."""
    corr, time = parts
    mix = GaussianMixture.random(6, 8, std=0.1, seed=1)
    data = mix.sample(1500, gen(4), torch.float64)
    entropy, _ = mix.entropy(100000, gen(5))
    n = [round(1 + 999 * k / 9) for k in range(10)][::-1]
    grid = torch.tensor(n + [0], dtype=torch.float64) / 1000
    dec = float(corr.posterior_coefficients(*corr.marginals(torch.tensor([0.002, 0.001], dtype=torch.float64),
                                                             data[:1]))[2]) ** 2
    exact = udm.fit_variance(None, corr, time, source="exact", oracle=mix, times=grid, samples=1500)
    analytic = udm.fit_variance(mix.denoiser(corr), corr, time, data, times=grid, samples=1500)
    gap = {}
    for name, var in (("small", None), ("large", ClosedFormVariance(corr, "large")), ("exact", exact.table),
                      ("analytic", analytic.table)):
        r = udm.discrete_nelbo(mix.q_theta(corr, var), corr, grid, data, generator=gen(6), decoder_variance=dec)
        gap[name] = r.nats_per_dim - entropy / 8
        assert gap[name] > -4 * r.stderr
    assert gap["small"] > gap["large"] > 2 * gap["analytic"] and gap["large"] > 2 * gap["exact"], gap
    assert abs(gap["analytic"] - gap["exact"]) < 0.3 * gap["exact"], gap


def test_nelbo_bad_input(parts):
    corr, time = parts
    mix = gaussian_data()
    data = mix.sample(10, gen(0), torch.float64)
    with pytest.raises(ConfigError, match=r"discrete_nelbo: the decoder variance Sigma_\{t_1\} must be > 0; got 0"):
        udm.discrete_nelbo(mix.q_theta(corr, ClosedFormVariance(corr, "small")), corr, time.grid(3), data)
    with pytest.raises(ConfigError, match=r"discrete_nelbo: denoiser must have predict\(\)"):
        udm.discrete_nelbo(mix.denoiser(corr), corr, time.grid(3), data)


# ------------------------------------------------------------------------------------------ optimal trajectory
def test_dynamic_program_finds_the_brute_force_optimum():
    g = gen(7)
    for m, points in ((7, 3), (8, 4), (9, 5)):
        cost = torch.rand(m, m, generator=g, dtype=torch.float64).triu(1)
        cost[torch.tril(torch.ones(m, m, dtype=torch.bool))] = float("inf")
        best = min((sum(float(cost[p[k], p[k + 1]]) for k in range(points - 1)), p)
                   for mid in itertools.combinations(range(1, m - 1), points - 2) for p in [(0, *mid, m - 1)])
        path = optimal_trajectory(cost, points)
        assert tuple(path) == best[1]


def test_step_costs_are_bao_dp_costs_up_to_telescoping_terms(parts):
    """C[s, r] - d/2 F[s, r] = phi(r) - phi(s) with F[s, r] = log(1 - beta_skip Gamma_r / (1 - alpha_bar_r)) of the
    Analytic-DPM code (Ho notation): the same trajectory minimises both."""
    corr, _ = parts
    times = torch.arange(1, 41, dtype=torch.float64) / 40
    gamma = 0.2 + 0.75 * torch.rand(40, generator=gen(8), dtype=torch.float64)
    abar = corr.schedule(times).alpha ** 2
    sigma = (1 - abar) / abar * (1 - gamma)
    d = 3
    cost = step_costs(corr, times, sigma, torch.zeros(1, d, dtype=torch.float64))
    i, j = torch.triu_indices(40, 40, 1)
    bao = torch.log(1 - (1 - abar[j] / abar[i]) * gamma[j] / (1 - abar[j]))
    diff = cost[i, j] - 0.5 * d * bao
    phi = 0.5 * d * (torch.log(1 - abar) - torch.log(abar))
    torch.testing.assert_close(diff, phi[j] - phi[i], rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:fit_variance. Gamma_t")
def test_spacing_optimal_samples_on_the_dp_grid_and_beats_even_spacing(parts):
    corr, time = parts
    mix = GaussianMixture.random(3, 2, std=0.2, seed=3)
    fit = udm.fit_variance(None, corr, time, source="exact", oracle=mix, dense=200, samples=400)
    like = torch.zeros(1, 2, dtype=torch.float64)
    grid = optimal_grid(6, fit.table, corr, like)
    assert len(grid) == 7 and float(grid[0]) == 1.0 and float(grid[-2]) == float(fit.times[0]) and grid[-1] == 0
    cost = step_costs(corr, fit.times, fit.table.values, like)
    idx = [int((fit.times - t).abs().argmin()) for t in grid[:-1].flip(0)]
    even = torch.linspace(0, len(fit.times) - 1, 6).round().long().tolist()
    total = sum(float(cost[a, b]) for a, b in zip(idx, idx[1:]))
    assert total < sum(float(cost[a, b]) for a, b in zip(even, even[1:]))
    seen = []
    udm.sample(mix.q_theta(corr, fit.table), corr, time, shape=(4, 2), sampler="ddpm", steps=6, spacing="optimal",
               variance=fit.table, generator=gen(0), callback=lambda st: seen.append(st.t))
    assert seen == grid[:-1].tolist()
    with pytest.raises(ConfigError, match=r"time discrete: spacing 'optimal' needs a fitted variance table"):
        time.grid(6, spacing="optimal")
    with pytest.raises(ConfigError, match=r"spacing 'optimal': the variance must be a fitted table"):
        udm.sample(mix.denoiser(corr), corr, time, shape=(4, 2), steps=6, spacing="optimal", generator=gen(0))
