"""udm-pixelate's own tests: udm's conformance suite (one line) plus closed-form checks."""

import math

import pytest
import torch
import udm
from udm.errors import ConfigError
from udm.testing.pytest_plugin import conformance_tests

from udm_pixelate import Pixelate, bars, pyramid_swd


def fitted(levels=2):
    c = Pixelate(levels=levels, sigma_max=0.3)
    c.fit(bars(n=512, seed=3))
    return c


# udm's conformance suite, one test per check: shapes, determinism, t = 0 identity, the exact noise
# posterior, and the marginal check for every sampler udm derives for Pixelate. With two levels the path
# t -> F_t has a kink at t = 1/2, where ODE solvers are only first order, so they are checked on one level
# (F_t linear in t: every solver is exact) and Euler through the kinks below.
# The multistep solvers extrapolate x0_hat in log-SNR per Haar coefficient: with the oracle's constant x0_hat every
# step is exact, kinks or not. The reverse SDEs are weakly first order: 200 steps per chain on one level.
EXACT = ["cold", "ddim", "ddpm", "invert", "naive", "posterior", "refresh", "renoise", "residual",
         "deis", "dpm++2m", "dpm++2m_sde", "dpm++3m", "dpm++3m_sde", "multistep", "unipc"]
ODE = ["euler", "heun", "rk4", "ode", "edm", "adaptive"]
SDE = ["sde", "euler_maruyama", "reverse_diffusion"]
test_conformance = conformance_tests(fitted, lambda: bars(n=1, seed=1), n=1500, samplers=EXACT)
test_conformance_ode = conformance_tests(lambda: fitted(levels=1), lambda: bars(n=1, seed=1), n=1500,
                                         samplers=ODE, fine_steps=10,
                                         sampler_options={"adaptive": {"rtol": 1e-5, "atol": 1e-5}})
test_conformance_sde = conformance_tests(lambda: fitted(levels=1), lambda: bars(n=1, seed=1), n=1500,
                                         samplers=SDE, fine_steps=200)


def test_every_derived_sampler_is_checked(udm_registry):
    assert sorted(EXACT + ODE + SDE) == udm.supported_samplers(fitted(), udm_registry)


def test_euler_is_exact_through_the_kinks(udm_registry, oracle_denoiser):
    # F_t is linear in t between kinks at j / L and d/dt is taken from below, so an Euler step from t down
    # to s on a grid containing the kinks lands exactly on F_s(x0, eps): no statistics needed.
    c = fitted(levels=3)
    x0 = bars(n=16, seed=5)
    eps = c.sample_noise(x0, torch.Generator().manual_seed(0))
    grid = torch.tensor([0.9, 2 / 3, 0.5, 1 / 3, 0.2], dtype=torch.float64)
    x_t = c.forward(x0, eps, grid[:1].expand(16))
    x_s = udm_registry.get("sampler", "euler")(oracle_denoiser(x0), c, grid, x_t)
    assert torch.allclose(x_s, c.forward(x0, eps, grid[-1:].expand(16)), atol=1e-5)


def test_registered_through_the_entry_point(udm_registry):
    assert udm_registry.provider("corruption", "pixelate").distribution == "udm-pixelate"
    assert udm_registry.get("metric", "pyramid_swd") is pyramid_swd


def test_pyramid_levels_are_block_means():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    c = Pixelate(levels=2)
    one = torch.ones(1, dtype=torch.float64)
    top = c.blur_operator(x, one)  # t = 1: level L, the mean of the whole 4x4 image
    assert torch.allclose(top, torch.full_like(x, 7.5))
    half = c.blur_operator(x, one * 0.5)  # t = 0.5: u = 1, exactly level 1 (2x2 block means)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.allclose(half[0, 0], expected)
    quarter = c.blur_operator(x, one * 0.25)  # u = 0.5: halfway between x and the 2x2 means
    assert torch.allclose(quarter, (x + half) / 2)


def test_prior_matches_the_fitted_coarse_law():
    c = fitted(levels=3)  # 8x8 bars pooled to one pixel: every bar image has mean -1 + 2 * 16/64 = -0.5
    x1 = c.sample_prior((4000, 1, 8, 8), torch.Generator().manual_seed(0))
    noise_sd = c.sigma_max / math.sqrt(64)  # the pixel mean of x_1 is -0.5 + mean of 64 N(0, sigma^2)
    assert abs(float(x1.mean((1, 2, 3)).mean()) + 0.5) < 4 * noise_sd / math.sqrt(4000) + 1e-3
    assert abs(float(x1.mean((1, 2, 3)).std()) - noise_sd) < 0.05 * noise_sd


def test_unfitted_prior_and_bad_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match=r"corruption pixelate: the prior must be fitted .*Call corruption.fit"):
        Pixelate().sample_prior((2, 1, 8, 8), None)
    with pytest.raises(ConfigError, match=r"corruption pixelate: data must have shape .*divisible by 2\^levels = 8"):
        Pixelate(levels=3).forward(torch.zeros(2, 1, 6, 6), torch.zeros(2, 1, 6, 6), torch.ones(2))
    with pytest.raises(ConfigError, match=r"corruption pixelate: sigma_max must be > 0; got 0"):
        Pixelate(sigma_max=0)


def test_pyramid_swd_of_a_shift_is_the_shift():
    # Every pooled pixel moves by c, so each projection moves by c * sum(theta) exactly and
    # SW^2 = c^2 mean_k (sum theta_k)^2, whose expectation is c^2 (E[(1.theta)^2] = 1 for unit theta).
    # (1.theta)^2 ~ Beta(1/2, (d-1)/2) * d has variance < 2, so the mean of P projections has sd < sqrt(2/P).
    x = bars(n=300, seed=0)
    c, p = 0.4, 2048
    got = pyramid_swd(x + c, x, levels=2, projections=p, seed=0)
    assert abs(got**2 / c**2 - 1) < 4 * math.sqrt(2 / p)
    assert pyramid_swd(x, x, projections=64) == 0.0
