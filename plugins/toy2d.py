"""Built-in 2-D datasets, generated (never downloaded): two moons, eight Gaussians, swiss roll,
checkerboard. Each returns a float32 tensor ``(n, 2)`` scaled to roughly unit variance; the same
``seed`` gives the same points."""

from __future__ import annotations

import math

import torch

import udm
from udm.errors import ConfigError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_n(n: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"dataset {name}: n must be an integer >= 1; got {n!r}.")


def two_moons(n: int = 20000, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), standardised."""
    _check_n(n, "two_moons")
    g = _gen(seed)
    upper = torch.rand(n, generator=g) < 0.5
    theta = torch.rand(n, generator=g) * math.pi
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=g)
    return ((pts - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])).float()


def eight_gaussians(n: int = 20000, radius: float = 2.0, std: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Eight isotropic Gaussians with equal weights on a circle."""
    _check_n(n, "eight_gaussians")
    g = _gen(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return (centres + std * torch.randn(n, 2, generator=g)) / math.sqrt(radius**2 / 2 + std**2)


def swiss_roll(n: int = 20000, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """The 2-D swiss roll (scikit-learn's make_swiss_roll, x-z plane), standardised."""
    _check_n(n, "swiss_roll")
    g = _gen(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * torch.randn(n, 2, generator=g)
    return (pts / 7.5).float()


def checkerboard(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Uniform on the black squares of a 4x4 checkerboard on [-2, 2]^2."""
    _check_n(n, "checkerboard")
    g = _gen(seed)
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2 + (torch.floor(x1) % 2)
    return (torch.stack([x1, x2], 1) / 1.15).float()


@udm.hookimpl
def udm_register_datasets(register):
    for fn in (two_moons, eight_gaussians, swiss_roll, checkerboard):
        register(fn)
