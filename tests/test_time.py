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


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing"])
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
    ideal = (frac**2 if spacing == "quadratic" else frac) * T
    rounded = ideal.round()
    if bool((rounded[1:] < rounded[:-1]).all()):  # no collisions: exactly the rounded formula
        assert torch.equal(n.round(), rounded)


def test_discrete_uniform_grid_is_ddim_stride():
    time = udm.load_registry().create("time", "discrete", steps=1000)
    assert torch.equal(time.grid(10) * 1000, torch.arange(1000, -1, -100, dtype=torch.float64))
    assert torch.equal(time.grid(1000) * 1000, torch.arange(1000, -1, -1, dtype=torch.float64))
    q = time.grid(10, spacing="quadratic") * 1000
    assert torch.allclose(q, torch.tensor([10.0 * i * i for i in range(10, -1, -1)], dtype=torch.float64))
    for steps in (7, 10, 50):  # diffusers' "trailing" (np.arange(T, 0, -T/N).round() - 1), shifted by udm's + 1
        trailing = torch.tensor([round(1000 - k * 1000 / steps) for k in range(steps)] + [0], dtype=torch.float64)
        assert torch.equal(time.grid(steps, spacing="trailing") * 1000, trailing)
        assert torch.equal(time.grid(steps, spacing="uniform"), time.grid(steps, spacing="trailing"))


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
    with pytest.raises(ConfigError, match=r"time 'discrete': spacing must be one of uniform, quadratic, trailing, "
                                          r"logsnr, karras, optimal; got 'quadratc'\. Did you mean 'quadratic'\?"):
        discrete.grid(5, spacing="quadratc")
    cosine = udm.load_registry().create("corruption", "gaussian", schedule="cosine")
    long = type(discrete)(steps=1000)
    top = int(round(float(long.grid(2, spacing="logsnr", corruption=cosine)[0]) * 1000))
    assert top < 1000
    with pytest.raises(ConfigError, match=rf"time discrete: grid: steps must be at most {top} with spacing 'logsnr' "
                                          rf"\(the grid starts at n = {top}\); got {top + 1}\. Use fewer steps or "
                                          rf"spacing 'uniform'\."):
        long.grid(top + 1, spacing="logsnr", corruption=cosine)
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


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing"])
def test_continuous_grids(reg, spacing):
    """Strides from t = 1: no model call at t_min (issue 18: it spent one of N calls where x0_hat ~ x_t)."""
    time = reg.create("time", "continuous", t_min=1e-3)
    g = time.grid(11, spacing=spacing)
    assert g.shape == (12,) and g[0] == 1.0 and g[-1] == 0.0
    assert bool((g[1:] < g[:-1]).all())
    frac = torch.arange(11, 0, -1, dtype=torch.float64) / 11  # (N - i)/N
    floor = 0.0 if spacing == "trailing" else 1e-3
    ideal = floor + (1 - floor) * (frac**2 if spacing == "quadratic" else frac)
    assert torch.allclose(g[:-1], ideal, atol=1e-15)
    assert float(g[-2]) > 1e-3 + (1 - 1e-3) / 11**2 - 1e-15  # the last call is at least one stride from t_min
    assert torch.allclose(time.encode(g), 1000 * g)
    assert torch.equal(time.grid(1), torch.tensor([1.0, 0.0], dtype=torch.float64))


def vp_log_snr(t, bmin=0.1, bmax=20.0):
    log_a2 = -(bmin * t + 0.5 * (bmax - bmin) * t * t)  # closed form, independent of the plugin
    return log_a2 - torch.log(-torch.expm1(log_a2))


@pytest.mark.parametrize("name", ["continuous", "discrete"])
def test_logsnr_and_karras_grids_span_the_uniform_grids_noise_levels(reg, name):
    """logsnr: equal steps in lambda = log(alpha^2/sigma^2); karras: equal steps in (sigma/alpha)^(1/7) (Karras et
    al. 2022, eq. 5). Both from the grid's first noise level to the uniform grid's last one; lambda(1) = -7.55 is above
    LOG_SNR_MIN here, so they start at t = 1."""
    corr = reg.create("corruption", "gaussian", schedule={"name": "vp", "beta_min": 0.1, "beta_max": 15.0})
    time = reg.create("time", name, **({"t_min": 1e-3} if name == "continuous" else {}))
    uniform = time.grid(16)
    for spacing, u in (("logsnr", lambda lam: lam), ("karras", lambda lam: torch.exp(-lam / 14))):
        g = time.grid(16, spacing=spacing, corruption=corr)
        assert g.shape == (17,) and g[0] == 1.0 and g[-1] == 0.0 and bool((g[1:] < g[:-1]).all())
        assert float(g[-2]) == float(uniform[-2])
        lam_of = lambda t: vp_log_snr(t, 0.1, 15.0)  # noqa: E731
        steps = u(lam_of(g[:-1])).diff()
        if name == "continuous":  # exactly equal steps (the schedule's exact inverse)
            assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-9), (spacing, steps)
        else:  # the same times as continuous time with t_min = 0, rounded to the lattice n / 1000
            cont = reg.create("time", "continuous", t_min=0.0).grid(16, spacing=spacing, corruption=corr)
            assert torch.equal(g * 1000, (cont * 1000).round())


@pytest.mark.parametrize("schedule", ["cosine", "flow"])
def test_noise_level_grids_start_at_the_log_snr_floor_when_lambda_1_is_minus_infinity(reg, schedule):
    """cosine and flow have alpha(1) = 0 (lambda = -inf): the grid starts at lambda = LOG_SNR_MIN (issue 18: the
    old clamp at -40 crowded the points within 4e-4 of t = 1), and udm.sample starts from x_t0 = sigma_t0 eps."""
    corr = reg.create("corruption", "gaussian", schedule=schedule)
    time = reg.create("time", "continuous")
    for spacing in ("logsnr", "karras"):
        g = time.grid(5, spacing=spacing, corruption=corr)
        lam = corr.noise_schedule.log_snr(g[:-1])
        assert abs(float(lam[0]) - udm.grids.LOG_SNR_MIN) < 1e-9 and float(g[0]) < 1
        assert float(g[0] - g[1]) > 0.01  # no pile-up at t = 1
    x = udm.sample(lambda x, t, gen=None: torch.zeros_like(x), corr, time, shape=(20000, 1), sampler="invert",
                   steps=1, spacing="logsnr", generator=gen(0), dtype=torch.float64, callback=None)
    assert torch.equal(x, torch.zeros_like(x))  # one step: the prediction itself
    start = udm.api.sample_start(corr, float(g[0]), (50, 3), gen(1), dtype=torch.float64)
    s0 = float(corr.noise_schedule.amplitudes(g[:1])[1])  # cosine 0.99983, flow 0.982
    assert torch.allclose(start, s0 * torch.randn((50, 3), generator=gen(1), dtype=torch.float64), rtol=1e-12, atol=0)
    one = udm.api.sample_start(corr, 1.0, (50, 3), gen(1), dtype=torch.float64)
    assert torch.equal(one, corr.sample_prior((50, 3), gen(1), dtype=torch.float64))


def test_continuous_errors(reg):
    time = reg.create("time", "continuous")
    with pytest.raises(CapabilityError, match=r"grid spacing 'logsnr': the corruption must have a noise schedule with a "
                                              r"log-SNR and its inverse \(a noise_schedule, as gaussian has\); got "
                                              r"None\. Use spacing 'uniform', 'quadratic' or 'trailing'\."):
        time.grid(10, spacing="logsnr")
    with pytest.raises(CapabilityError, match=r"grid spacing 'karras': .* got 'blur'\."):
        time.grid(10, spacing="karras", corruption=reg.create("corruption", "blur"))
    with pytest.raises(ConfigError, match=r"time 'continuous': spacing must be one of uniform, quadratic, trailing, "
                                          r"logsnr, karras, optimal; got 'log_snr'\. Did you mean 'logsnr'\?"):
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
