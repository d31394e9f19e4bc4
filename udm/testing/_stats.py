"""Two-sample tests with a stated error rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class KSResult:
    statistic: float  #: sup_v |F_a(v) - F_b(v)|
    critical: float  #: reject when statistic > critical
    alpha: float  #: the test's false-alarm rate (asymptotic; conservative for discrete data)

    @property
    def passed(self) -> bool:
        return self.statistic <= self.critical


def ks_two_sample(a: torch.Tensor, b: torch.Tensor, alpha: float = 1e-3) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test of 1-D samples ``a (n,)`` and ``b (m,)``.

    Critical value c(alpha) sqrt((n + m) / (n m)) with c(alpha) = sqrt(-ln(alpha / 2) / 2) (the
    asymptotic Kolmogorov distribution). Ties are handled exactly (the empirical CDFs are compared
    at every distinct value), which makes the test conservative for discrete data.
    """
    a = a.detach().reshape(-1).double().cpu().sort().values
    b = b.detach().reshape(-1).double().cpu().sort().values
    vals = torch.cat([a, b]).unique()
    fa = torch.searchsorted(a, vals, right=True).double() / a.numel()
    fb = torch.searchsorted(b, vals, right=True).double() / b.numel()
    d = float((fa - fb).abs().max())
    n, m = a.numel(), b.numel()
    crit = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))
    return KSResult(d, crit, alpha)
