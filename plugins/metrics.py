"""Built-in sample-quality metrics between samples ``(n, ...)`` and a reference ``(m, ...)``."""

from __future__ import annotations

import torch

import udm


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def _quantiles(sorted_proj: torch.Tensor, k: int) -> torch.Tensor:
    n = sorted_proj.shape[0]
    if n == k:
        return sorted_proj
    pos = (torch.arange(k, dtype=torch.float64) + 0.5) / k * n - 0.5
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).clamp(0, 1)[:, None]
    return sorted_proj[lo] * (1 - w) + sorted_proj[hi] * w


def sliced_wasserstein(samples: torch.Tensor, reference: torch.Tensor, *, projections: int = 256,
                       generator: torch.Generator | None = None, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance: sqrt of the mean over random unit directions theta of
    W2^2(theta . X, theta . Y), each 1-D W2 computed exactly from sorted projections (quantile-matched
    when the sample sizes differ). Directions come from ``generator`` (or ``seed``)."""
    x, y = _flat(samples).cpu(), _flat(reference).cpu()
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    k = max(px.shape[0], py.shape[0])
    return float(((_quantiles(px, k) - _quantiles(py, k)) ** 2).mean().sqrt())


def energy_distance(samples: torch.Tensor, reference: torch.Tensor, *, generator=None,
                    max_points: int = 4096) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), unbiased U-statistics
    for the within-sample terms; at most ``max_points`` of each set are used (the first ones)."""
    x, y = _flat(samples)[:max_points].cpu(), _flat(reference)[:max_points].cpu()
    n, m = x.shape[0], y.shape[0]
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


@udm.hookimpl
def udm_register_metrics(register):
    register(sliced_wasserstein)
    register(energy_distance)
