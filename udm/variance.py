"""Variance sources for a Gaussian q_theta(x_0 | x_t) = N(mean_theta(x_t), Sigma_t).

A variance source is a callable ``(t (batch,) float64, x_t) -> Sigma`` returning q_theta's variance in the
corruption's basis, broadcastable against ``(batch, *shape)``: one value per time (isotropic) or one per
basis coefficient (e.g. per DCT frequency for ``blur``). :class:`udm.Denoiser` draws x0_hat from
N(mean, Sigma) with it (docs/math.md, "q_theta with a variance"). Sources:

* ``None``: the point estimate (x0_hat = mean).
* :class:`VarianceTable`: values tabulated at times (e.g. the times of a sampling grid), looked up exactly
  or interpolated linearly in t between them.
* ``"head"``: the network's second output.
* :class:`ClosedFormVariance`: Su's two closed forms, the optimal Sigma_t for two extreme data laws
  (``small``: a point mass, Sigma = 0, DDPM's beta_tilde; ``large``: N(0, I), Sigma = s^2 / (a^2 + s^2),
  DDPM's beta), with :func:`su_refresh_amount` their sigma-family form with the sigma_t <= s_s guard.
* fitted tables (:func:`udm.fit_variance`: ``analytic``, ``residual``, ``exact``) and a second head
  (:mod:`udm.variance_head`: ``sn``, ``npr``); docs/math.md, "Optimal reverse variance".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._tensor import append_dims
from .errors import CapabilityError, ConfigError

__all__ = ["VarianceTable", "ClosedFormVariance", "check_variance_source", "mmse_bound", "x0_scale",
           "su_refresh_amount", "CLOSED_FORMS", "check_variance_name"]


@dataclass
class VarianceTable:
    """Sigma_t tabulated at ``times``.

    Args:
        times: ``(M,)`` distinct times in [0, 1] (any order).
        values: ``(M,)`` one variance per time, or ``(M, *cshape)`` per basis coefficient with ``cshape``
            broadcastable to the data's per-sample shape. Non-negative.
        interpolate: between tabulated times, interpolate linearly in t (``True``) or refuse (``False``,
            the default: a table fitted on one grid must not be silently used on another).
        upper: optional upper confidence values, shaped like ``values`` (a Monte-Carlo fit's value + 3 standard
            errors): the optimal trajectory's costs use them (:func:`udm.variance_trajectory.optimal_grid`).
    """

    times: torch.Tensor
    values: torch.Tensor
    interpolate: bool = False
    upper: torch.Tensor | None = None

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
        if self.upper is not None:
            self.upper = torch.as_tensor(self.upper, dtype=torch.float64)[order]

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


def x0_scale(m: Any) -> torch.Tensor:
    """s^2 / a^2 per coefficient (float64; ``inf`` where a = 0): Cov[x_0 | x_t] = (s^2 / a^2) Cov[eps | x_t]."""
    a2 = m.a64 * m.a64
    return torch.where(a2 > 0, m.s64 * m.s64 / torch.where(a2 > 0, a2, torch.ones_like(a2)),
                       torch.full_like(a2, float("inf")))


def mmse_bound(m: Any, data_variance: Any) -> torch.Tensor:
    """v s^2 / (a^2 v + s^2) per coefficient (float64): the error of the best affine estimate of the coefficient
    (B x_0)_k from (B x_t)_k alone, an upper bound of the Bayes error E Var[(B x_0)_k | x_t] (``data_variance``
    v: the data's variance per coefficient, or one number)."""
    v = torch.as_tensor(data_variance, dtype=torch.float64, device=m.s64.device)
    s2, a2 = m.s64 * m.s64, m.a64 * m.a64
    den = a2 * v + s2
    return torch.where(den > 0, v * s2 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


@dataclass
class ClosedFormVariance:
    """Sigma_t = E Var[x_0 | x_t] in closed form for an assumed data law (Su's two DDPM variances):

    * ``small``: a point mass, Sigma = 0: with ``posterior``/``ddpm`` the step variance is DDPM's beta_tilde;
    * ``large``: N(0, I), Sigma_k = s_k^2 / (a_k^2 + s_k^2): with ``posterior`` the step variance is
      s_{t|s}^2 s_s^2 / s_t^2 + gamma^2 Sigma_t = DDPM's beta (1 - alpha_bar_t / alpha_bar_s for VP schedules).

    Kept in this form the DDPM posterior mean is unchanged, so no step needs sigma_t <= s_s (the guard of the
    sigma-family form, see :func:`su_refresh_amount`). Per basis coefficient for every linear-Gaussian corruption.
    """

    corruption: Any
    law: Literal["small", "large"]

    def __call__(self, t: torch.Tensor, x_t: torch.Tensor) -> Any:
        if self.law == "small":
            return 0.0
        m = self.corruption.marginal(t, x_t, derivatives=False)
        return mmse_bound(m, 1.0).to(device=x_t.device, dtype=x_t.dtype)


#: the closed-form variance choices by name
CLOSED_FORMS = ("small", "large")


def su_refresh_amount(corruption: Any, law: Literal["small", "large"]):
    """Su's two DDPM step deviations in the sigma-family form, x_s = sqrt(s_s^2 - sigma^2)/s_t x_t + ... + sigma z
    (docs/math.md), as a ``refresh`` amount ``(t, s) -> r = sigma / s_s`` ``(batch,)``:

    * ``small``: sigma = s_s s_{t|s} / s_t (r = sqrt(1 - SNR_t / SNR_s): DDPM, eta = 1);
    * ``large``: sigma = min(s_{t|s}, s_s): DDPM's beta_t with the guard sigma_t <= s_s (beta_t > beta_bar_{t-1}
      happens on strided grids and always on the step to t = 0, where sqrt(s_s^2 - sigma^2) is not real).

    For corruptions with one affine ``schedule(t)`` (alpha_t, sigma_t) per time (``refresh`` draws one amount per
    sample)."""
    if law not in CLOSED_FORMS:
        raise ConfigError(f"su_refresh_amount: law must be one of {', '.join(CLOSED_FORMS)}; got {law!r}.")
    if not callable(getattr(corruption, "schedule", None)):
        raise CapabilityError(f"su_refresh_amount: corruption {getattr(corruption, 'name', corruption)!r} must have an "
                              f"affine schedule(t) (one amplitude pair per time); got none. Use the variance sources "
                              f"'small'/'large' (ClosedFormVariance), which work per basis coefficient.")

    def amount(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        sch_t, sch_s = corruption.schedule(t.to(torch.float64)), corruption.schedule(s.to(torch.float64))
        at, st, as_, ss = sch_t.alpha, sch_t.sigma, sch_s.alpha, sch_s.sigma
        ratio = torch.where(as_ > 0, at / torch.where(as_ > 0, as_, torch.ones_like(as_)), torch.zeros_like(at))
        s_ts = (st * st - ratio * ratio * ss * ss).clamp_min(0).sqrt()
        if law == "small":
            r = torch.where(st > 0, s_ts / torch.where(st > 0, st, torch.ones_like(st)), torch.zeros_like(st))
        else:
            r = torch.where(ss > 0, torch.minimum(s_ts, ss) / torch.where(ss > 0, ss, torch.ones_like(ss)),
                            torch.zeros_like(ss))
        return r.clamp(0, 1)

    return amount


def check_variance_name(name: str, corruption: Any, where: str) -> None:
    """A named variance needs a linear-Gaussian corruption with a Gaussian q_theta."""
    cname = getattr(corruption, "name", type(corruption).__name__)
    if getattr(corruption, "family", None) != "gaussian" or not callable(getattr(corruption, "grid_table", None)):
        raise CapabilityError(f"{where}: variance {name!r} needs a linear-Gaussian corruption with a Gaussian q_theta; "
                              f"got {cname!r} (family {getattr(corruption, 'family', None)!r}). Drop the variance (a "
                              f"point estimate), or use gaussian, blur or another udm.LinearGaussian corruption.")
