"""The built-in ``labelled_blobs`` dataset: 2-D points with their class label, a batch of two parts (a mapping
``{"point": float (n, 2), "label": long (n, 1)}``; docs/howto-compose.md), for products such as
``product(point: gaussian, label: mask)``.

Class k in {0, ..., K - 1} has probability proportional to k + 1 (unequal, so that a joint histogram shows
whether the label's law is learnt) and its points are N(c_k, std^2 I), the centres c_k evenly spaced on a circle
of radius ``radius``. :func:`blob_law` gives the exact law (weights, centres, std) for oracles and tests.
"""

from __future__ import annotations

import math

import torch

import udm
from udm.errors import ConfigError

__all__ = ["labelled_blobs", "blob_law"]


def blob_law(classes: int = 4, radius: float = 2.0, std: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(class weights ``(K,)``, centres ``(K, 2)``, std), float64."""
    w = torch.arange(1, classes + 1, dtype=torch.float64)
    angle = torch.arange(classes, dtype=torch.float64) * (2 * math.pi / classes)
    return w / w.sum(), radius * torch.stack([angle.cos(), angle.sin()], 1), float(std)


def labelled_blobs(n: int = 20000, classes: int = 4, radius: float = 2.0, std: float = 0.3,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"point": (n, 2) float32, "label": (n, 1) long}`` (see the module docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"dataset labelled_blobs: n must be an integer >= 1; got {n!r}.")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ConfigError(f"dataset labelled_blobs: classes must be an integer >= 2; got {classes!r}.")
    g = torch.Generator().manual_seed(int(seed))
    weights, centres, s = blob_law(classes, radius, std)
    label = torch.multinomial(weights, n, replacement=True, generator=g)
    point = centres[label] + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return {"point": point.float(), "label": label[:, None]}


@udm.hookimpl
def udm_register_datasets(register):
    register(labelled_blobs)
