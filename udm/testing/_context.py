"""What every conformance check shares: the corruption, the test batches, independent generators, the
times, the feature functions; plus row-wise comparison helpers for tensors and sequence batches."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._features import Features, as_features

__all__ = ["KitContext", "CheckResult", "rows_equal", "float_gap", "time_tensor"]

#: tolerances of the exact (non-statistical) checks on float data: |a - b| <= ATOL + RTOL |b|
ATOL = RTOL = 1e-4


@dataclass
class CheckResult:
    """One check's outcome; ``detail`` names the statistic, its value and the threshold it was held to."""

    name: str
    passed: bool
    detail: str = ""

    def __str__(self) -> str:
        return f"[{'ok' if self.passed else 'FAIL'}] {self.name}: {self.detail}"


@dataclass
class KitContext:
    corruption: Any
    x0: Any  #: the caller's batch (all rows; the prior check draws from it)
    one: Any  #: its first example as a batch of one
    xn: Any  #: that example repeated n times
    n: int
    seed: int
    device: torch.device
    features: Callable[..., Any]
    pair_features: Callable[..., Any]
    repeat: Callable[[Any, int], Any]
    probes: list[float]  #: times of the single-time checks
    prior_data: Any

    def generator(self, purpose: str, index: int = 0, device: torch.device | None = None) -> torch.Generator:
        """A generator for one purpose, seeded from (seed, purpose, index): draws for x_t, for the noise
        posterior, for the sampler and for the reference are independent of each other."""
        digest = hashlib.sha256(f"{self.seed}/{purpose}/{index}".encode()).digest()
        return torch.Generator(device=device or self.device).manual_seed(int.from_bytes(digest[:7], "little"))

    def feats(self, x: Any, x0: Any, tag: str) -> Features:
        """Named marginal features with random directions seeded by ``tag`` (equal tags: equal directions)."""
        return as_features(self.features(x, x0, self.generator("features/" + tag, device=torch.device("cpu"))),
                           "features")

    def pair_feats(self, x_t: Any, x_s: Any, x0: Any, tag: str) -> Features:
        return as_features(self.pair_features(x_t, x_s, x0, self.generator("pairs/" + tag, device=torch.device("cpu"))),
                           "pair_features")


def time_tensor(value: float, like: Any) -> torch.Tensor:
    """t as float64 ``(batch,)`` on ``like``'s device."""
    n = like.shape[0] if isinstance(like, torch.Tensor) else len(like)
    return torch.full((n,), float(value), dtype=torch.float64, device=like.device)


def _is_sequences(x: Any) -> bool:
    return hasattr(x, "tokens") and hasattr(x, "lengths")


def rows_equal(a: Any, b: Any) -> torch.Tensor:
    """Bool ``(n,)`` on the CPU: which rows of two batches are equal (float tensors to ATOL + RTOL |b|;
    integer tensors exactly; sequence batches by length and tokens; dataclasses of tensors field by field)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return torch.zeros(len(a), dtype=torch.bool)
        a, b = a.reshape(a.shape[0], -1).cpu(), b.reshape(b.shape[0], -1).cpu()
        if a.dtype.is_floating_point or b.dtype.is_floating_point:
            a, b = a.double(), b.double()
            return ((a - b).abs() <= ATOL + RTOL * b.abs()).all(1) & (a.isfinite() == b.isfinite()).all(1)
        return (a == b).all(1)
    if _is_sequences(a) and _is_sequences(b):
        same = a.lengths.cpu() == b.lengths.cpu()
        w = max(a.tokens.shape[1], b.tokens.shape[1])
        ta = torch.nn.functional.pad(a.tokens.cpu(), (0, w - a.tokens.shape[1]), value=-(2**40))
        tb = torch.nn.functional.pad(b.tokens.cpu(), (0, w - b.tokens.shape[1]), value=-(2**40))
        real = torch.arange(w)[None] < a.lengths.cpu()[:, None]
        return same & ((ta == tb) | ~real).all(1)
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        out = None
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if isinstance(va, torch.Tensor):
                eq = rows_equal(va, vb)
                out = eq if out is None else out & eq
        if out is not None:
            return out
    n = len(a)
    return torch.full((n,), bool(a == b), dtype=torch.bool)


def float_gap(a: Any, b: Any) -> float | None:
    """max |a - b| over float tensors of equal shape, else ``None``."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype.is_floating_point:
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return None
