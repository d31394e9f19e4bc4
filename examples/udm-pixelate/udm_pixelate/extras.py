"""A dataset (``bars``) and a metric (``pyramid_swd``) to go with the ``pixelate`` corruption."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from udm.errors import ConfigError


def bars(n: int = 4096, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Synthetic ``(n, 1, size, size)`` images in [-1, 1]: one bright horizontal or vertical bar, two
    pixels wide, at a random position on a dark background. Generated, never downloaded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or size < 4 or size % 2:
        raise ConfigError(f"dataset bars: need an integer n >= 1 and an even size >= 4; got n={n!r}, size={size!r}.")
    g = torch.Generator().manual_seed(int(seed))
    pos = torch.randint(0, size - 1, (n,), generator=g)
    vertical = torch.rand(n, generator=g) < 0.5
    idx = torch.arange(size)
    on = ((idx[None] >= pos[:, None]) & (idx[None] <= pos[:, None] + 1)).float()  # (n, size)
    img = torch.where(vertical[:, None, None], on[:, None, :].expand(n, size, size), on[:, :, None].expand(n, size, size))
    return (2 * img - 1)[:, None]


def pyramid_swd(samples: torch.Tensor, reference: torch.Tensor, *, levels: int = 2, projections: int = 256,
                generator: torch.Generator | None = None, seed: int = 0) -> float:
    """Mean over pyramid levels j = 0..levels of the sliced Wasserstein-2 distance between the images
    average-pooled over 2^j x 2^j blocks: SW_2(P, Q)^2 = E_theta W_2(theta.P, theta.Q)^2, theta uniform on
    the sphere, each 1-D W_2 exact from sorted projections. ``samples (n, C, H, W)``, ``reference (m, C, H, W)``."""
    if samples.ndim != 4 or reference.ndim != 4:
        raise ConfigError(f"metric pyramid_swd: samples must be images (n, C, H, W); got shapes "
                          f"{tuple(samples.shape)} and {tuple(reference.shape)}. Use sliced_wasserstein for vectors.")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    total = 0.0
    for j in range(levels + 1):
        x = F.avg_pool2d(samples.double().cpu(), 2**j).flatten(1)
        y = F.avg_pool2d(reference.double().cpu(), 2**j).flatten(1)
        theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
        theta = theta / theta.norm(dim=0, keepdim=True)
        q = torch.linspace(0, 1, max(len(x), len(y)), dtype=torch.float64)  # quantile-matched if n != m
        qx, qy = torch.quantile(x @ theta, q, dim=0), torch.quantile(y @ theta, q, dim=0)
        total += float(((qx - qy) ** 2).mean().sqrt())
    return total / (levels + 1)
