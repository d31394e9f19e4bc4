"""Fitting q_theta's variance Sigma_t by Monte Carlo (docs/math.md, "Optimal reverse variance").

For a linear-Gaussian corruption, per basis coefficient k, x_t = a x_0 + s eps and E[x_0 | x_t] =
(x_t - s E[eps | x_t]) / a, so the data-averaged posterior variance is

    Sigma_{t,k} = E Var[(B x_0)_k | x_t] = (s_k^2 / a_k^2) (1 - Gamma_{t,k}),   Gamma_{t,k} = E[eps_hat_k^2]

(Bao et al. 2022, "Analytic-DPM", Theorem 1; eps_hat = the noise posterior at the model's mean). Sources:

* ``analytic``: Gamma by Monte Carlo over training data and fresh noise with the trained (EMA) mean
  model; Sigma clipped into [0, v s^2 / (a^2 v + s^2)] (the best affine estimate's error, v = the data's
  variance per coefficient). Gamma_t > 1 (Sigma < 0: the Monte-Carlo error exceeds the signal 1 - Gamma_t,
  which happens where a^2/s^2 is small and Var[x_0 | x_t] is close to the bound) is flagged with a warning
  and Sigma_t set to the bound there (Bao et al.'s code clamps it to 0: a "small" variance where nothing is
  known, which costs far more NELBO than erring large, and which the optimal trajectory would read as free
  steps).
* ``residual``: Sigma = E[(B x_0 - B x0_hat)_k^2], the maximum-likelihood variance of a Gaussian around
  an imperfect mean (Bao et al. 2022b, "Extended Analytic-DPM", eq. 9).
* ``exact``: the exact E[diag Cov[x_0 | x_t]] of an oracle (:class:`udm.testing.GaussianMixture`).

Each is fitted on given times (the sampling grid's, looked up exactly) or on a dense grid (interpolated
in t), as one value per time or one per basis coefficient (per DCT frequency for ``blur``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._progress import progress_bar
from .errors import ConfigError, UdmWarning
from .variance import VarianceTable, check_variance_name, mmse_bound, x0_scale

__all__ = ["FitSource", "FIT_SOURCES", "VarianceFit", "fit_variance", "fit_times", "data_variance"]

FitSource = Literal["analytic", "residual", "exact"]
FIT_SOURCES = ("analytic", "residual", "exact")
#: standard errors above the estimate of a table's ``upper`` values (the optimal trajectory's costs)
CONFIDENCE = 3.0


@dataclass
class VarianceFit:
    """A fitted variance table and how good it is.

    Attributes:
        source: ``analytic``, ``residual`` or ``exact``.
        table: Sigma per time, ``(M,)`` or ``(M, *shape)`` per basis coefficient (clipped for ``analytic``):
            what :class:`udm.Denoiser` draws x0_hat with.
        raw: ``(M,)`` the per-dimension estimate Tr(Sigma_t)/d before clipping.
        stderr: ``(M,)`` its Monte-Carlo standard error.
        bound: ``(M,)`` the per-dimension linear-MMSE bound (the clip's upper end).
        gamma: ``(M,)`` Gamma_t = E||eps_hat||^2 / d (``analytic``), else ``None``.
        samples: data examples per time; per_coefficient: one value per basis coefficient.
        data_variance: the data's variance per basis coefficient ``shape``.
        grid: how the times were chosen (``{"times": M}``, ``{"steps": K, "spacing": ...}`` or ``{"dense": M}``).
        coefficient_stderr: ``(M, *shape)`` each coefficient's standard error (``per_coefficient``), else ``None``.
    """

    source: str
    table: VarianceTable
    raw: torch.Tensor
    stderr: torch.Tensor
    bound: torch.Tensor
    gamma: torch.Tensor | None
    samples: int
    per_coefficient: bool
    data_variance: torch.Tensor
    grid: dict[str, Any]
    coefficient_stderr: torch.Tensor | None = None

    @property
    def times(self) -> torch.Tensor:
        """``(M,)`` the fitted times, increasing."""
        return self.table.times

    @property
    def scalar(self) -> torch.Tensor:
        """``(M,)`` Tr(Sigma_t)/d of the table (the per-coefficient values averaged)."""
        v = self.table.values
        return v if v.ndim == 1 else v.flatten(1).mean(1)

    @property
    def flagged(self) -> list[float]:
        """The times where Gamma_t > 1 (a failed ``analytic`` estimate, replaced by its bound)."""
        if self.gamma is None:
            return []
        return [float(t) for t, g in zip(self.times, self.gamma) if g > 1]


def data_variance(data: torch.Tensor, corruption: Any, batch: int = 4096) -> torch.Tensor:
    """The variance of each basis coefficient of ``data`` ``(n, *shape)``: ``shape`` float64."""
    if len(data) < 2:
        raise ConfigError(f"fit_variance: data must hold at least 2 examples; got {len(data)}.")
    s1 = s2 = 0.0
    for chunk in data.split(batch):
        c = corruption.to_basis(chunk.to(torch.float64))
        s1, s2 = s1 + c.sum(0), s2 + (c * c).sum(0)
    n = len(data)
    return ((s2 - s1 * s1 / n) / (n - 1)).clamp_min(0).cpu()


def fit_times(time_type: Any, corruption: Any, *, times: Any = None, steps: int | None = None,
              spacing: str = "uniform", dense: int | None = None) -> tuple[torch.Tensor, bool, dict[str, Any]]:
    """(times > 0 decreasing, interpolate, description): exactly one of ``times``, ``steps`` (the sampling grid
    ``time_type.grid(steps, spacing=spacing)``) or ``dense`` (a grid of ``dense`` uniform steps, interpolated)."""
    given = [name for name, v in (("times", times), ("steps", steps), ("dense", dense)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"fit_variance: exactly one of times, steps or dense must be given; got "
                          f"{', '.join(given) or 'none'}. Pass steps=K (and spacing) for a sampling grid, or dense=M "
                          f"for a table interpolated in t (needed by spacing 'optimal').")
    if times is not None:
        t = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
        t = t[t > 0].unique().flip(0)
        if not len(t) or float(t.max()) > 1:
            raise ConfigError(f"fit_variance: times must hold at least one time in (0, 1]; got {times!r}.")
        return t, False, {"times": len(t)}
    if steps is not None and spacing == "optimal":
        raise ConfigError("fit_variance: spacing must be a fixed grid spacing to fit on a sampling grid; got "
                          "'optimal', which is chosen from a fitted table. Fit a dense table (dense=M, "
                          "`udm fit-variance RUN --dense M`), then sample with spacing 'optimal'.")
    if time_type is None:
        raise ConfigError("fit_variance: time_type must be given with steps or dense; got None.")
    count = steps if steps is not None else dense
    grid = time_type.grid(int(count), spacing=spacing if steps is not None else "uniform", corruption=corruption)
    grid = grid[grid > 0]
    desc = {"steps": int(steps), "spacing": spacing} if steps is not None else {"dense": int(dense)}
    return grid, dense is not None, desc


def _mean_predictor(model: Any, corruption: Any, time_type: Any):
    """``(x_t, t, generator, marginal) -> E_q[x_0]`` from a network, a denoiser with ``predict`` or a callable."""
    from .denoiser import Denoiser

    model = getattr(model, "mean_network", model)  # a variance-head network: its frozen mean
    if isinstance(model, torch.nn.Module):
        if time_type is None:
            raise ConfigError("fit_variance: time_type must be given with a network; got None.")
        model = Denoiser(model.eval(), corruption, time_type)
    predict = getattr(model, "predict", None)
    if callable(predict):
        def mean(x_t, t, g, m):
            pred = predict(x_t, t, g, marginal=m) if getattr(model, "accepts_marginal", False) else predict(x_t, t, g)
            return pred.mean if pred.mean is not None else pred.x0_hat
        return mean
    if callable(model):
        return lambda x_t, t, g, m: model(x_t, t, g)
    raise ConfigError(f"fit_variance: model must be a torch.nn.Module, a denoiser with predict() or a callable "
                      f"(x_t, t, generator) -> x0_hat; got {type(model).__name__}.")


class _Moments:
    """Running sums of a per-sample, per-coefficient statistic u ``(b, *shape)`` over the Monte-Carlo draws."""

    def __init__(self) -> None:
        self.n, self.s1, self.s2, self.g = 0, 0.0, 0.0, []

    def add(self, u: torch.Tensor) -> None:
        self.n += u.shape[0]
        self.s1, self.s2 = self.s1 + u.sum(0), self.s2 + (u * u).sum(0)
        self.g.append(u.flatten(1).mean(1))

    def coefficient(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        var = ((self.s2 - self.n * mean * mean) / max(self.n - 1, 1)).clamp_min(0)
        return mean, (var / self.n).sqrt()

    def scalar(self) -> tuple[float, float]:
        g = torch.cat(self.g)
        return float(g.mean()), float(g.std() / math.sqrt(len(g))) if len(g) > 1 else float("inf")


def fit_variance(model: Any, corruption: Any, time_type: Any = None, data: torch.Tensor | None = None, *,
                 source: FitSource = "analytic", times: Any = None, steps: int | None = None,
                 spacing: str = "uniform", dense: int | None = None, samples: int = 1000, batch_size: int = 1000,
                 per_coefficient: bool = False, oracle: Any = None, generator: torch.Generator | None = None,
                 progress: bool | None = False) -> VarianceFit:
    """Estimate q_theta's variance Sigma_t on a grid of times (see the module docstring).

    Args:
        model: the trained mean (a network, wrapped in :class:`udm.Denoiser`; its EMA copy is what sampling
            uses), a denoiser with ``predict`` or a callable ``(x_t, t, generator) -> x0_hat``; ``None`` for
            ``exact``.
        corruption, time_type: the run's; data: training data ``(n, *shape)`` (``exact``: default, draws of the
            oracle).
        source: ``analytic`` | ``residual`` | ``exact`` (needs ``oracle``, a :class:`udm.testing.GaussianMixture`).
        times / steps (+ ``spacing``) / dense: where to fit (:func:`fit_times`).
        samples: data examples per time, each with fresh noise (drawn without replacement when the data
            has that many); batch_size: examples per model call.
        per_coefficient: one value per basis coefficient (per DCT frequency for ``blur``) instead of one per time.
        generator: every draw's generator (default: seeded 0); progress: a progress bar (``None``: on a terminal).
    Returns:
        a :class:`VarianceFit`; ``fit.table`` is the variance source for :func:`udm.sample`.
    """
    if source not in FIT_SOURCES:
        raise ConfigError(f"fit_variance: source must be one of {', '.join(FIT_SOURCES)}; got {source!r}. The "
                          f"closed forms small/large need no fit; sn/npr are trained heads (train.stage).")
    check_variance_name(source, corruption, "fit_variance")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
        raise ConfigError(f"fit_variance: samples must be an integer >= 2; got {samples!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"fit_variance: batch_size must be an integer >= 1; got {batch_size!r}.")
    grid, interpolate, desc = fit_times(time_type, corruption, times=times, steps=steps, spacing=spacing, dense=dense)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if source == "exact":
        if not callable(getattr(oracle, "posterior", None)):
            raise ConfigError(f"fit_variance: source 'exact' needs oracle=, an exact posterior (e.g. "
                              f"udm.testing.GaussianMixture); got {type(oracle).__name__}.")
        data = oracle.sample(max(samples, 2), g, torch.float64) if data is None else data
        mean = None
    else:
        if data is None:
            raise ConfigError(f"fit_variance: data must be the training data (n, *shape) for source {source!r}; got "
                              f"None.")
        mean = _mean_predictor(model, corruption, time_type)
    if not isinstance(data, torch.Tensor) or not data.is_floating_point():
        raise ConfigError(f"fit_variance: data must be a float tensor (n, *shape); got {type(data).__name__}.")
    device = data.device
    if isinstance(model, torch.nn.Module):
        device = next((p.device for p in model.parameters()), device)
    v = data_variance(data, corruption).to(device)
    pick = torch.randperm(len(data), generator=g)[:samples] if samples <= len(data) else \
        torch.randint(len(data), (samples,), generator=g)
    x0_all = data[pick]
    moments, gammas = [], []
    with torch.no_grad(), progress_bar(len(grid), f"fit-variance {source}", enabled=progress) as bar:
        for t in grid.tolist():
            mom, gam = _Moments(), _Moments()
            for x0 in x0_all.split(batch_size):
                x0 = x0.to(device)
                tt = torch.full((len(x0),), t, dtype=torch.float64, device=device)
                m = corruption.marginal(tt[:1], x0, derivatives=False)
                eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(device)
                x_t = corruption.apply(m, x0, eps)
                mom.add(STATISTICS[source](_Draw(corruption, m, x0, x_t, tt, g, v, mean, oracle), gam))
            moments.append(mom)
            gammas.append(gam)
            bar.update(1)
    return _finish(source, grid, interpolate, desc, moments, gammas, corruption, x0_all, v, samples, per_coefficient)


@dataclass
class _Draw:
    """One Monte-Carlo batch at one time: x_0, x_t = F_t(x_0, eps) and what the statistics need."""

    corruption: Any
    m: Any  #: the corruption's coefficients at t
    x0: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    generator: torch.Generator
    data_variance: torch.Tensor
    mean: Any  #: ``(x_t, t, generator, marginal) -> E_q[x_0]``, or ``None`` (``exact``)
    oracle: Any

    def mu(self) -> torch.Tensor:
        return self.mean(self.x_t, self.t, self.generator, self.m).to(torch.float64)


def _exact(d: _Draw, gamma: _Moments) -> torch.Tensor:
    return d.oracle.posterior(d.x_t, d.corruption, marginal=d.m).variance.to(torch.float64)


def _residual(d: _Draw, gamma: _Moments) -> torch.Tensor:
    return d.corruption.to_basis(d.x0.to(torch.float64) - d.mu()) ** 2


def _analytic(d: _Draw, gamma: _Moments) -> torch.Tensor:
    dev = d.x_t.device
    a64, s64 = d.m.a64.to(dev), d.m.s64.to(dev)
    c_t, c_0 = d.corruption.to_basis(d.x_t.to(torch.float64)), d.corruption.to_basis(d.mu())
    safe = torch.where(s64 > 0, s64, torch.ones_like(s64))
    e2 = torch.where(s64 > 0, (c_t - a64 * c_0) / safe, torch.zeros_like(c_t)) ** 2  # eps_hat_k^2 per coefficient
    gamma.add(e2)
    scale = x0_scale(d.m).to(dev)
    bound = mmse_bound(d.m, d.data_variance).to(dev).expand_as(e2)
    # a = 0: x_t says nothing about the coefficient, Sigma = the data's variance (the bound); s = 0: Sigma = 0
    return torch.where(torch.isinf(scale), bound, torch.where(s64 > 0, scale, torch.zeros_like(scale)) * (1 - e2))


#: source -> u ``(b, *shape)`` float64 whose mean over the draws is Sigma_{t,k} (analytic also sums Gamma's)
STATISTICS = {"analytic": _analytic, "residual": _residual, "exact": _exact}


def _finish(source, grid, interpolate, desc, moments, gammas, corruption, x0_all, v, samples, per_coefficient):
    like = x0_all[:1].to(torch.float64).cpu()
    table = corruption.grid_table(grid.cpu(), like, derivatives=False)
    bounds, raws, ses, values, coef_ses, uppers = [], [], [], [], [], []
    for i, mom in enumerate(moments):
        m = table.rows(i, i + 1)
        bound_k = mmse_bound(m, v.cpu())[0].expand(v.shape)
        raw_k, se_k = (v.cpu() for v in mom.coefficient())
        coef_ses.append(se_k)
        raw, se = mom.scalar()
        scalar_amplitudes = m.a64[0].numel() == 1 and m.s64[0].numel() == 1
        if source == "analytic":  # Gamma > 1 (raw < 0): no information left in the estimate -> the bound
            per = torch.where(raw_k < 0, bound_k, raw_k.minimum(bound_k))
            bound = float(bound_k.mean())
            one = (bound if raw < 0 else min(raw, bound)) if scalar_amplitudes else float(per.mean())
        else:
            per, one = raw_k, raw
        cap = bound_k if source == "analytic" else torch.full_like(bound_k, float("inf"))
        upper = (per + CONFIDENCE * se_k).minimum(cap) if per_coefficient else \
            torch.tensor(min(one + CONFIDENCE * se, float(cap.mean())), dtype=torch.float64)
        uppers.append(upper)
        bounds.append(float(bound_k.mean()))
        raws.append(raw)
        ses.append(se)
        values.append(per if per_coefficient else torch.tensor(one, dtype=torch.float64))
    gamma = torch.tensor([gm.scalar()[0] for gm in gammas], dtype=torch.float64) if source == "analytic" else None
    fit = VarianceFit(source, VarianceTable(grid.cpu(), torch.stack(values), interpolate, torch.stack(uppers)),
                      torch.tensor(raws, dtype=torch.float64), torch.tensor(ses, dtype=torch.float64),
                      torch.tensor(bounds, dtype=torch.float64), gamma, samples, per_coefficient, v.cpu(), desc,
                      torch.stack(coef_ses) if per_coefficient else None)
    order = grid.cpu().argsort()  # the table sorts its times increasing; keep every per-time array aligned with it
    fit.raw, fit.stderr, fit.bound = fit.raw[order], fit.stderr[order], fit.bound[order]
    if fit.coefficient_stderr is not None:
        fit.coefficient_stderr = fit.coefficient_stderr[order]
    if fit.gamma is not None:
        fit.gamma = fit.gamma[order]
    flagged = fit.flagged
    if flagged:
        shown = ", ".join(f"{t:.4g}" for t in flagged[:5]) + (", ..." if len(flagged) > 5 else "")
        warnings.warn(UdmWarning(
            f"fit_variance: Gamma_t = E||eps_hat||^2/d must be <= 1; got > 1 at {len(flagged)} of {len(grid)} times "
            f"(t = {shown}), where the Monte-Carlo error exceeds 1 - Gamma_t; Sigma_t is its upper bound there. Raise "
            f"samples for a better estimate."), stacklevel=2)
    return fit
