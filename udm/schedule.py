"""Noise schedules: the amplitudes (alpha_t, sigma_t) of x_t = alpha_t x_0 + sigma_t eps, a plugin kind.

A schedule is a small object holding only its own parameters. Everything is float64 and elementwise in
``t`` (any shape, broadcast or expanded tensors included), with t in [0, 1], data at t = 0
(alpha_0 = 1, sigma_0 = 0 for variance-preserving and flow schedules; sigma_0 = 0 for all).

Amplitudes, not variances: ``alpha`` is the DDPM paper's sqrt(alpha_bar), ``sigma`` its
sqrt(1 - alpha_bar) (docs/math.md, "Notation"). The log-SNR is lambda = log(alpha^2 / sigma^2); the
fast solvers use half of it, log(alpha / sigma).

A subclass implements :meth:`amplitudes` and, wherever a closed form exists, :meth:`derivatives`,
:meth:`log_snr` and :meth:`t_of_log_snr` (the defaults use forward-mode autodiff and bisection).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["Schedule", "AffineSchedule"]


@dataclass(frozen=True)
class AffineSchedule:
    """alpha_t, sigma_t and (when computed) their t-derivatives, float64, each shaped like ``t``."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    dalpha: torch.Tensor | None = None
    dsigma: torch.Tensor | None = None


def _f64(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.to(torch.float64) if t.dtype != torch.float64 else t


class Schedule(ABC):
    """Base class of noise schedules (registered through the schedule hook, like every plugin kind)."""

    name: ClassVar[str] = ""

    @abstractmethod
    def amplitudes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) float64, shaped like ``t``."""

    def derivatives(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha/dt, d sigma/dt) float64. Default: forward-mode autodiff of :meth:`amplitudes`
        (on a contiguous copy, so expanded time tensors work). Override with the closed form."""
        t = _f64(t).contiguous().clone()
        _, (da, ds) = torch.func.jvp(self.amplitudes, (t,), (torch.ones_like(t),))
        return da, ds

    def __call__(self, t: torch.Tensor) -> AffineSchedule:
        t = _f64(t)
        a, s = self.amplitudes(t)
        da, ds = self.derivatives(t)
        return AffineSchedule(a, s, da, ds)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2), float64 (+inf at sigma = 0, -inf at alpha = 0)."""
        a, s = self.amplitudes(_f64(t))
        return 2 * (torch.log(a) - torch.log(s))

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`log_snr` (which decreases in t). Default: 80 bisection steps on [0, 1];
        values outside [log_snr(1), log_snr(0)] give the nearest end."""
        lam = _f64(lam)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(80):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
