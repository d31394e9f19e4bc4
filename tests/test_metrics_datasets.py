"""Built-in metrics (sliced Wasserstein, energy distance) against closed forms, and the built-in 2-D
datasets: shapes, determinism, scale, and the geometry each one promises."""

from __future__ import annotations

import math

import pytest
import torch

from udm.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sw(reg):
    return reg.get("metric", "sliced_wasserstein")


@pytest.fixture(scope="module")
def energy(reg):
    return reg.get("metric", "energy_distance")


def test_sliced_wasserstein_of_a_shift(sw):
    """Y = X + m: every 1-D projection is shifted by theta . m, so SW^2 = E_theta (theta . m)^2 = |m|^2 / d
    for theta uniform on the sphere (d = 2 here). 20000 directions: Monte-Carlo s.e. ~0.5%."""
    x = torch.randn(500, 2, generator=gen(0))
    m = torch.tensor([0.6, -0.8])
    got = sw(x, x + m, projections=20000, seed=1)
    assert abs(got / (1.0 / math.sqrt(2)) - 1) < 0.02
    assert sw(x, x) == 0.0
    assert math.isclose(sw(x, x + m, seed=3), sw(x + m, x, seed=3), rel_tol=1e-12)  # symmetric
    # different sizes are quantile-matched: a set against itself duplicated is at distance ~0
    assert sw(x, torch.cat([x, x]), seed=0) < 0.02
    assert sw(x, x + m, seed=5) == sw(x, x + m, generator=gen(5))  # seed == generator seed


def test_energy_distance_of_two_unit_gaussians(energy):
    """1-D N(0,1) vs N(mu,1): E|X-Y| = 2 phi(mu/sqrt2) sqrt2 + mu (2 Phi(mu/sqrt2) - 1) (folded normal),
    E|X-X'| = 2/sqrt(pi); the distance is 2 E|X-Y| - 2 E|X-X'|."""
    mu, n = 1.0, 3000
    x = torch.randn(n, 1, generator=gen(0), dtype=torch.float64)
    y = mu + torch.randn(n, 1, generator=gen(1), dtype=torch.float64)
    s = math.sqrt(2)
    phi = math.exp(-(mu / s) ** 2 / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(mu / s / math.sqrt(2)))
    e_xy = s * 2 * phi + mu * (2 * cdf - 1)
    want = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    assert abs(energy(x, y) - want) < 0.03  # want ~0.47; the U-statistic's s.e. at n = 3000 is ~0.01
    same = energy(x, torch.randn(n, 1, generator=gen(2), dtype=torch.float64))
    assert abs(same) < 0.01  # unbiased: zero in expectation for equal laws


@pytest.mark.parametrize("name", ["two_moons", "eight_gaussians", "swiss_roll", "checkerboard"])
def test_datasets_shape_determinism_scale(reg, name):
    a = reg.create("dataset", name, n=5000, seed=0)
    assert a.shape == (5000, 2) and a.dtype == torch.float32
    assert torch.equal(a, reg.create("dataset", name, n=5000, seed=0))
    assert not torch.equal(a, reg.create("dataset", name, n=5000, seed=1))
    assert float(a.abs().max()) < 5 and 0.3 < float(a.std()) < 1.5
    with pytest.raises(ConfigError, match=rf"dataset {name}: n must be an integer >= 1; got 0\."):
        reg.create("dataset", name, n=0)


def test_two_moons_lie_on_two_half_circles(reg):
    x = reg.create("dataset", "two_moons", n=4000, noise=0.0, seed=0).double()
    p = x * torch.tensor([0.87, 0.5], dtype=torch.float64) + torch.tensor([0.5, 0.25], dtype=torch.float64)
    upper = (p - torch.tensor([0.0, 0.0], dtype=torch.float64)).norm(dim=1)
    lower = (p - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1)
    on_upper = ((upper - 1).abs() < 1e-5) & (p[:, 1] >= -1e-6)
    on_lower = ((lower - 1).abs() < 1e-5) & (p[:, 1] <= 0.5 + 1e-6)
    assert bool((on_upper | on_lower).all())
    frac = float(on_upper.double().mean())
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / 4000)


def test_eight_gaussians_and_checkerboard_geometry(reg):
    x = reg.create("dataset", "eight_gaussians", n=8000, seed=0).double() * math.sqrt(2 + 0.01)
    ang = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(ang / (math.pi / 4)) % 8
    centres = 2 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    assert float((x - centres).norm(dim=1).max()) < 0.1 * 6  # within 6 standard deviations
    counts = torch.bincount(k.long(), minlength=8).double()
    assert bool(((counts - 1000).abs() < 5 * math.sqrt(1000)).all())
    c = reg.create("dataset", "checkerboard", n=8000, seed=0).double() * 1.15
    assert bool(((torch.floor(c[:, 0]) + torch.floor(c[:, 1])) % 2 == 0).all()) or \
        bool(((torch.floor(c[:, 0]) + torch.floor(c[:, 1])) % 2 == 1).all())
    assert float(c.abs().max()) <= 2.0 + 1e-6
