"""Tests with a stated error rate: two-sample and one-sample Kolmogorov-Smirnov, a z-test, and the
"worst feature" summary the conformance kit reports."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._features import Features

__all__ = ["KSResult", "ks_two_sample", "ks_normal", "z_critical", "WorstKS", "worst_ks"]


@dataclass
class KSResult:
    statistic: float  #: sup_v |F_a(v) - F_b(v)|
    critical: float  #: reject when statistic > critical
    alpha: float  #: the test's false-alarm rate (asymptotic; conservative for discrete data)

    @property
    def passed(self) -> bool:
        return self.statistic <= self.critical


def _c(alpha: float) -> float:
    """c(alpha) = sqrt(-ln(alpha / 2) / 2), the asymptotic Kolmogorov quantile."""
    return math.sqrt(-math.log(alpha / 2) / 2)


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
    return KSResult(d, _c(alpha) * math.sqrt((n + m) / (n * m)), alpha)


def ks_normal(z: torch.Tensor, alpha: float = 1e-3) -> KSResult:
    """One-sample KS test of ``z (n,)`` against N(0, 1): D = sup |F_n - Phi|, critical c(alpha) / sqrt(n)."""
    z = z.detach().reshape(-1).double().cpu().sort().values
    n = z.numel()
    phi = 0.5 * torch.erfc(-z / math.sqrt(2))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - phi, phi - (i - 1) / n).max())
    return KSResult(d, _c(alpha) / math.sqrt(n), alpha)


def z_critical(alpha: float) -> float:
    """The two-sided standard-normal quantile z with P(|Z| > z) = alpha."""
    return float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))


@dataclass
class WorstKS:
    """The feature whose two-sample KS test is furthest beyond (or closest to) its critical value."""

    name: str
    result: KSResult
    count: int  #: how many features were tested (each at alpha / count)

    @property
    def passed(self) -> bool:
        return self.result.passed

    def describe(self, what: str = "KS D") -> str:
        r = self.result
        return (f"{what}={r.statistic:.4f} on '{self.name}' vs critical {r.critical:.4f} "
                f"(worst of {self.count} features, each at alpha {r.alpha:.2g})")


def worst_ks(fa: Features, fb: Features, alpha: float) -> WorstKS:
    """KS-test every feature of ``fa`` against the same feature of ``fb`` at level alpha / k (so that all k
    together falsely reject with probability at most alpha); return the worst one."""
    k = fa.values.shape[1]
    worst = None
    for j in range(k):
        res = ks_two_sample(fa.values[:, j], fb.values[:, j], alpha=alpha / k)
        if worst is None or res.statistic - res.critical > worst.result.statistic - worst.result.critical:
            worst = WorstKS(fa.names[j], res, k)
    return worst
