"""What a network predicts for a linear-Gaussian corruption, and how its loss is weighted.

One object serves every linear-Gaussian corruption (docs/math.md, "Parameterisations"). Per basis
coefficient x_t = a x_0 + s eps, with time derivatives a', s' (all formulas act elementwise, with
coefficients given as floats or tensors that broadcast against the data in the basis):

===========  ======================================  ==========================================  ================
prediction   target                                  x_0 from the output o                       x_0-error weight
===========  ======================================  ==========================================  ================
``x0``       x_0                                     o                                           1
``eps``      eps                                     (x_t - s o) / a                             SNR
``v``        (a eps - s x_0) / r,  r^2 = a^2 + s^2   (a x_t - s r o) / r^2                       SNR + 1
``score``    -eps / s  (= grad log p(x_t | x_0))     (x_t + s^2 o) / a                           SNR / s^2
``flow``     a' x_0 + s' eps  (= d x_t / dt)         (s o - s' x_t) / (s a' - a s')              (a' - a s'/s)^2
===========  ======================================  ==========================================  ================

SNR = a^2 / s^2. An error d in x_0 is an error sqrt(weight) d in the prediction (last column), so a
squared error in prediction space is the x_0 squared error weighted by that column. ``weighting`` names
the x_0-space weight wanted: ``x0`` (1), ``eps`` (SNR), ``v`` (SNR + 1), ``min_snr`` (min(SNR, gamma), Hang
et al. 2023), ``truncated_snr`` (max(SNR, 1), Salimans & Ho 2022); ``none`` keeps the plain mean squared
error of the prediction. v is Salimans & Ho's (2022) velocity, normalised by r for any schedule; flow is
the flow-matching velocity (Lipman et al. 2023). Conversions are exact.

A parameterisation that is singular where the schedule reaches a = 0 or s = 0 (eps or score where
a -> 0, an x_0-space weight that grows without bound as s -> 0) is refused by :meth:`check`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from .errors import ConfigError, did_you_mean

__all__ = ["Parameterization", "PredictionName", "WeightingName", "PREDICTIONS", "WEIGHTINGS"]

PredictionName = Literal["x0", "eps", "v", "score", "flow"]
WeightingName = Literal["none", "x0", "eps", "v", "min_snr", "truncated_snr"]
PREDICTIONS: tuple[str, ...] = get_args(PredictionName)
WEIGHTINGS: tuple[str, ...] = get_args(WeightingName)

#: conversion and weight factors larger than this at the ends of [0, 1] count as singular
_SINGULAR = 1e8


def _sqrt(v):
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


@dataclass(frozen=True)
class Parameterization:
    """Prediction target and loss weighting for linear-Gaussian corruptions (see the module docstring).

    Args:
        prediction: what the network outputs.
        weighting: the x_0-space loss weight, or ``none`` (plain MSE of the prediction).
        gamma: the min-SNR gamma.
    """

    prediction: PredictionName = "v"
    weighting: WeightingName = "none"
    gamma: float = 5.0

    def __post_init__(self) -> None:
        for key, value, allowed in (("prediction", self.prediction, PREDICTIONS),
                                    ("weighting", self.weighting, WEIGHTINGS)):
            if value not in allowed:
                raise ConfigError(f"parameterisation: {key} must be one of {', '.join(allowed)}; got {value!r}."
                                  f"{did_you_mean(str(value), allowed)}")
        if not self.gamma > 0:
            raise ConfigError(f"parameterisation: gamma must be > 0; got {self.gamma!r}.")

    @property
    def needs_derivatives(self) -> bool:
        """Whether conversions need a' and s' (the ``flow`` target)."""
        return self.prediction == "flow"

    # ------------------------------------------------------------ conversions
    def target(self, x0, eps, a, s, da=None, ds=None):
        """The regression target for (x_0, eps) at coefficients (a, s[, a', s'])."""
        p = self.prediction
        if p == "x0":
            return x0
        if p == "eps":
            return eps
        if p == "v":
            r = _sqrt(a * a + s * s)
            return (a / r) * eps - (s / r) * x0
        if p == "score":
            return -eps / s
        return da * x0 + ds * eps

    def to_x0(self, out, x_t, a, s, da=None, ds=None):
        """x_0 from the network output ``out`` (exact inverse of :meth:`target` given x_t)."""
        kx, ko = self.x0_coefficients(a, s, da, ds)
        if self.prediction == "x0":
            return out
        return kx * x_t + ko * out

    def x0_coefficients(self, a, s, da=None, ds=None):
        """(k_x, k_o) with x_0 = k_x x_t + k_o out; (0, 1) for ``x0``."""
        p = self.prediction
        if p == "x0":
            return 0.0, 1.0
        if p == "eps":
            return 1 / a, -s / a
        if p == "v":
            r2 = a * a + s * s
            return a / r2, -s * _sqrt(r2) / r2
        if p == "score":
            return 1 / a, s * s / a
        den = s * da - a * ds
        return -ds / den, s / den

    def natural_weight(self, a, s, da=None, ds=None):
        """The x_0-space weight that a plain squared error in prediction space amounts to."""
        p = self.prediction
        if p == "x0":
            return torch.ones_like(a) if isinstance(a, torch.Tensor) else 1.0
        snr = (a / s) ** 2
        if p == "eps":
            return snr
        if p == "v":
            return snr + 1
        if p == "score":
            return snr / (s * s)
        return (da - a * ds / s) ** 2

    def loss_weight(self, a, s, da=None, ds=None):
        """Weight on the squared error *in prediction space* that realises ``weighting``; ``None`` for none."""
        w = self.weighting
        if w == "none":
            return None
        snr = (a / s) ** 2
        wanted = {"x0": lambda: snr * 0 + 1, "eps": lambda: snr, "v": lambda: snr + 1,
                  "min_snr": lambda: snr.clamp(max=self.gamma), "truncated_snr": lambda: snr.clamp(min=1.0)}[w]()
        return wanted / self.natural_weight(a, s, da, ds)

    # ----------------------------------------------------------------- guard
    def singular_at(self, a, s, da=None, ds=None) -> str | None:
        """Why this parameterisation is singular at coefficients (a, s[, a', s']) (float64 tensors), or None."""
        with torch.no_grad():
            kx, ko = self.x0_coefficients(a, s, da, ds)
            for name, v in (("the x_0 conversion", kx), ("the x_0 conversion", ko)):
                v = torch.as_tensor(v, dtype=torch.float64)
                if not bool(torch.isfinite(v).all()) or float(v.abs().max()) > _SINGULAR:
                    return f"{name} divides by {'a' if self.prediction in ('eps', 'score') else 'a vanishing factor'}"
            w = self.loss_weight(a, s, da, ds)
            if w is not None:
                w = torch.as_tensor(w, dtype=torch.float64)
                if not bool(torch.isfinite(w).all()) or float(w.abs().max()) > _SINGULAR:
                    return "the loss weight grows without bound"
        return None

    def check(self, coefficients, where: str) -> None:
        """Refuse a parameterisation singular at the ends of [0, 1].

        Args:
            coefficients: ``t (n,) float64 -> (a, s, a', s')``, float64 tensors with leading dim n.
            where: the corruption's name for the error message.
        """
        ends = torch.tensor([1e-9, 1.0], dtype=torch.float64)
        why = self._why(coefficients, ends)
        if why is None:
            return
        safe = []
        for p in PREDICTIONS:
            for w in WEIGHTINGS:
                cand = Parameterization(p, w, self.gamma)
                if cand._why(coefficients, ends) is None:
                    safe.append(f"{p}/{w}")
        raise ConfigError(
            f"{where}: prediction/weighting must be non-singular on the schedule's whole range; got "
            f"{self.prediction}/{self.weighting}, where {why}. Safe choices for this schedule "
            f"(prediction/weighting): {', '.join(safe) or '(none)'}.")

    def _why(self, coefficients, ends) -> str | None:
        for t in ends:
            a, s, da, ds = coefficients(t.reshape(1))
            why = self.singular_at(a, s, da, ds)
            if why is not None:
                return f"{why} at t = {float(t):g}"
        return None

    def describe(self) -> dict[str, Any]:
        return {"prediction": self.prediction, "weighting": self.weighting, "gamma": self.gamma}
