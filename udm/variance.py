"""Variance sources for a Gaussian q_theta(x_0 | x_t) = N(mean_theta(x_t), Sigma_t).

A variance source is a callable ``(t (batch,) float64, x_t) -> Sigma`` returning q_theta's variance in the
corruption's basis, broadcastable against ``(batch, *shape)``: one value per time (isotropic) or one per
basis coefficient (e.g. per DCT frequency for ``blur``). :class:`udm.Denoiser` draws x0_hat from
N(mean, Sigma) with it (docs/math.md, "q_theta with a variance"). Sources:

* ``None``: the point estimate (x0_hat = mean).
* :class:`VarianceTable`: values tabulated at times (e.g. the times of a sampling grid), looked up exactly
  or interpolated linearly in t between them.
* ``"head"``: the network's second output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._tensor import append_dims
from .errors import CapabilityError, ConfigError

__all__ = ["VarianceTable", "check_variance_source"]


@dataclass
class VarianceTable:
    """Sigma_t tabulated at ``times``.

    Args:
        times: ``(M,)`` distinct times in [0, 1] (any order).
        values: ``(M,)`` one variance per time, or ``(M, *cshape)`` per basis coefficient with ``cshape``
            broadcastable to the data's per-sample shape. Non-negative.
        interpolate: between tabulated times, interpolate linearly in t (``True``) or refuse (``False``,
            the default: a table fitted on one grid must not be silently used on another).
    """

    times: torch.Tensor
    values: torch.Tensor
    interpolate: bool = False

    def __post_init__(self) -> None:
        self.times = torch.as_tensor(self.times, dtype=torch.float64).reshape(-1)
        self.values = torch.as_tensor(self.values, dtype=torch.float64)
        if self.values.shape[:1] != self.times.shape:
            raise ConfigError(f"variance table: values must have one row per time ({self.times.shape[0]}); "
                              f"got shape {tuple(self.values.shape)}.")
        if not bool(torch.isfinite(self.values).all()) or bool((self.values < 0).any()):
            raise ConfigError(f"variance table: values must be finite and >= 0; got min "
                              f"{float(self.values.min()):.3g}. Clip the estimate into [0, its bound].")
        order = self.times.argsort()
        self.times, self.values = self.times[order], self.values[order]

    def lookup(self, t: torch.Tensor) -> torch.Tensor:
        """Values at ``t`` ``(batch,)``: ``(batch, *cshape)`` float64."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).to(self.times.device)
        idx = torch.searchsorted(self.times, t).clamp(0, len(self.times) - 1)
        lo = (idx - 1).clamp_min(0)
        near = torch.where((self.times[lo] - t).abs() < (self.times[idx] - t).abs(), lo, idx)
        exact = (self.times[near] - t).abs() <= 1e-9
        if bool(exact.all()):
            return self.values[near]
        if not self.interpolate:
            bad = t[~exact][0]
            raise ConfigError(f"variance table: sampling time t = {float(bad):.6g} must be one of the table's "
                              f"{len(self.times)} times; got a time it was not fitted on. Fit the table on this "
                              f"sampling grid, or build it with interpolate=True.")
        hi = torch.searchsorted(self.times, t).clamp(1, len(self.times) - 1)
        t0, t1 = self.times[hi - 1], self.times[hi]
        w = ((t - t0) / (t1 - t0)).clamp(0, 1)
        w = w.reshape(-1, *([1] * (self.values.ndim - 1)))
        return (1 - w) * self.values[hi - 1] + w * self.values[hi]

    def __call__(self, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        v = self.lookup(t).to(device=x_t.device, dtype=x_t.dtype)
        return append_dims(v, x_t.ndim) if v.ndim == 1 else v


def check_variance_source(source: Any, corruption: Any, family: Any) -> None:
    """Refuse a variance where q_theta is not Gaussian or the corruption has no basis to draw in."""
    name = getattr(corruption, "name", type(corruption).__name__)
    if getattr(family, "name", family) != "gaussian":
        raise CapabilityError(f"denoiser: a variance source needs a Gaussian q_theta; got family "
                              f"{getattr(family, 'name', family)!r} for corruption {name!r}. "
                              f"Drop the variance (a point estimate) or use a Gaussian corruption.")
    if not callable(getattr(corruption, "from_basis", None)):
        raise CapabilityError(f"denoiser: a variance source needs a linear-Gaussian corruption (a basis to "
                              f"draw x0_hat in); got {name!r}. Linear-Gaussian corruptions: gaussian, blur, or "
                              f"any udm.LinearGaussian subclass.")
    if not (source == "head" or callable(source)):
        raise ConfigError(f"denoiser: variance must be None, 'head' or a callable (t, x_t) -> variance; "
                          f"got {source!r}.")
