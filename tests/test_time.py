"""Time types: training draws, sampling grids, encodings and their error messages."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import CapabilityError, ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_critical(df: int, z: float) -> float:
    """Upper quantile of chi-square(df) by Wilson-Hilferty; z = the normal quantile (3.09 for 1e-3)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def uniform_ks_critical(n: int, alpha: float) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


@pytest.fixture(scope="module")
def discrete(reg):
    return reg.create("time", "discrete", steps=20)


# ----------------------------------------------------------------- discrete
def test_discrete_training_draws_cover_exactly_the_grid_uniformly(discrete):
    T, n = 20, 200_000
    t = discrete.sample_train(n, gen(0))
    assert t.shape == (n,) and t.dtype == torch.float64
    idx = torch.round(t * T)
    assert torch.equal(t, idx / T)  # exactly on the grid n / T
    counts = torch.bincount(idx.long(), minlength=T + 1)
    assert counts[0] == 0 and bool((counts[1:] > 0).all())  # exactly {1..T}: never 0
    expected = n / T
    stat = float(((counts[1:] - expected) ** 2 / expected).sum())
    # chi-square test of uniformity over {1..T}, false-alarm rate 1e-3 (z = 3.09)
    assert stat < chi2_critical(T - 1, 3.09), stat
    assert torch.equal(discrete.sample_train(64, gen(5)), discrete.sample_train(64, gen(5)))


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("steps", [1, 7, 10, 20])
def test_discrete_grids(discrete, spacing, steps):
    T = discrete.steps
    g = discrete.grid(steps, spacing=spacing)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,)
    assert g[0] == 1.0 and g[-1] == 0.0
    assert bool((g[1:] < g[:-1]).all())
    n = g * T
    assert torch.allclose(n, n.round(), atol=1e-12)  # on the integer lattice
    frac = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    ideal = (frac if spacing == "uniform" else frac**2) * T
    rounded = ideal.round()
    if bool((rounded[1:] < rounded[:-1]).all()):  # no collisions: exactly the rounded formula
        assert torch.equal(n.round(), rounded)


def test_discrete_uniform_grid_is_ddim_stride():
    time = udm.load_registry().create("time", "discrete", steps=1000)
    assert torch.equal(time.grid(10) * 1000, torch.arange(1000, -1, -100, dtype=torch.float64))
    assert torch.equal(time.grid(1000) * 1000, torch.arange(1000, -1, -1, dtype=torch.float64))
    q = time.grid(10, spacing="quadratic") * 1000
    assert torch.allclose(q, torch.tensor([10.0 * i * i for i in range(10, -1, -1)], dtype=torch.float64))


def test_discrete_encoding_and_index(discrete):
    t = discrete.grid(20)
    assert torch.allclose(discrete.encode(t), t * 20)
    assert torch.equal(discrete.to_index(t), torch.arange(20, -1, -1))
    assert torch.equal(discrete.to_time(torch.arange(21)), torch.arange(21, dtype=torch.float64) / 20)


def test_discrete_errors(discrete):
    with pytest.raises(ConfigError, match=r"time discrete: grid: steps must be an integer >= 1 and at most 20; "
                                          r"got 21\."):
        discrete.grid(21)
    with pytest.raises(ConfigError, match=r"steps must be an integer >= 1 and at most 20; got 0\."):
        discrete.grid(0)
    with pytest.raises(ConfigError, match=r"time 'discrete': spacing must be one of uniform, quadratic, optimal; "
                                          r"got 'quadratc'\. Did you mean 'quadratic'\?"):
        discrete.grid(5, spacing="quadratc")
    with pytest.raises(ConfigError, match=r"time discrete: steps must be an integer >= 1; got True\."):
        type(discrete)(steps=True)
    with pytest.raises(ConfigError, match=r"time discrete: steps must be an integer >= 1; got 2\.5\."):
        type(discrete)(steps=2.5)


# --------------------------------------------------------------- continuous
def test_continuous_uniform_draws(reg):
    time = reg.create("time", "continuous", t_min=0.05)
    n = 100_000
    t = time.sample_train(n, gen(1))
    assert float(t.min()) >= 0.05 and float(t.max()) <= 1.0
    u = ((t - 0.05) / 0.95).sort().values
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((ecdf - u).abs().max()) < uniform_ks_critical(n, 1e-3)


def test_continuous_stratified_lowers_the_variance_of_the_batch_mean(reg):
    uni = reg.create("time", "continuous", t_min=1e-3)
    strat = reg.create("time", "continuous", t_min=1e-3, sampling="stratified")
    g1, g2, batch = gen(2), gen(3), 64
    m_uni = torch.stack([uni.sample_train(batch, g1).mean() for _ in range(2000)])
    draws = torch.stack([strat.sample_train(batch, g2) for _ in range(2000)])
    m_strat = draws.mean(1)
    # uniform: var = (1 - t_min)^2 / (12 B); stratified (a randomly shifted lattice): (1 - t_min)^2 / (12 B^2),
    # B = 64 times smaller. 2000 batches: the relative standard error of a variance estimate is ~3%.
    expected_uni = (1 - 1e-3) ** 2 / (12 * batch)
    expected_strat = (1 - 1e-3) ** 2 / (12 * batch**2)
    assert 0.85 < float(m_uni.var()) / expected_uni < 1.15
    assert 0.85 < float(m_strat.var()) / expected_strat < 1.15
    assert float(m_strat.var()) < float(m_uni.var()) / 32
    # and each stratified draw is still marginally uniform on [t_min, 1]
    u = ((draws[:, 0] - 1e-3) / (1 - 1e-3)).sort().values
    ecdf = torch.arange(1, 2001, dtype=torch.float64) / 2000
    assert float((ecdf - u).abs().max()) < uniform_ks_critical(2000, 1e-3)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_continuous_grids(reg, spacing):
    time = reg.create("time", "continuous", t_min=1e-3)
    g = time.grid(11, spacing=spacing)
    assert g.shape == (12,) and g[0] == 1.0 and g[-1] == 0.0 and math.isclose(float(g[-2]), 1e-3)
    assert bool((g[1:] < g[:-1]).all())
    frac = torch.linspace(1, 0, 11, dtype=torch.float64)
    ideal = 1e-3 + (1 - 1e-3) * (frac if spacing == "uniform" else frac**2)
    assert torch.allclose(g[:-1], ideal, atol=1e-12)
    assert torch.allclose(time.encode(g), 1000 * g)
    assert torch.equal(time.grid(1), torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_continuous_logsnr_grid_is_equally_spaced_in_log_snr(reg):
    bmin, bmax = 0.1, 20.0
    corr = reg.create("corruption", "gaussian", schedule={"name": "vp", "beta_min": bmin, "beta_max": bmax})
    time = reg.create("time", "continuous", t_min=1e-3)
    g = time.grid(16, spacing="logsnr", corruption=corr)
    assert g.shape == (17,) and g[0] == 1.0 and g[-1] == 0.0 and math.isclose(float(g[-2]), 1e-3)
    assert bool((g[1:] < g[:-1]).all())
    t = g[:-1]
    log_a2 = -(bmin * t + 0.5 * (bmax - bmin) * t * t)  # closed form, independent of the plugin
    lam = log_a2 - torch.log(-torch.expm1(log_a2))
    steps = lam.diff()
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-6), steps


def test_continuous_errors(reg):
    time = reg.create("time", "continuous")
    with pytest.raises(CapabilityError, match=r"time continuous: spacing 'logsnr' needs a corruption with an affine "
                                              r"schedule; got None\. Use spacing 'uniform' or 'quadratic'\."):
        time.grid(10, spacing="logsnr")
    with pytest.raises(ConfigError, match=r"time 'continuous': spacing must be one of uniform, quadratic, logsnr, optimal; "
                                          r"got 'log_snr'\. Did you mean 'logsnr'\?"):
        time.grid(10, spacing="log_snr")
    with pytest.raises(ConfigError, match=r"time continuous: grid: steps must be an integer >= 1; got 0\."):
        time.grid(0)
    with pytest.raises(ConfigError, match=r"time continuous: t_min must be in \[0, 1\); got 1\.0\."):
        type(time)(t_min=1.0)
    with pytest.raises(ConfigError, match=r"time continuous: sampling must be one of uniform, stratified; "
                                          r"got 'sobol'\."):
        type(time)(sampling="sobol")


def test_check_grid_errors():
    assert udm.check_grid([1.0, 0.5, 0.0]).dtype == torch.float64
    with pytest.raises(ConfigError, match=r"sampler: times must be strictly decreasing; got \[0\.5, 0\.5, 0\.0\]"):
        udm.check_grid([0.5, 0.5, 0.0])
    with pytest.raises(ConfigError, match=r"sampler: times must lie in \[0, 1\]; got range \[0\.0, 1\.5\]\."):
        udm.check_grid([1.5, 0.0])
    with pytest.raises(ConfigError, match=r"sampler: times must be a 1-D grid with at least 2 entries; got shape "
                                          r"\(1,\)\."):
        udm.check_grid([1.0])
