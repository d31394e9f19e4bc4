"""Reverse-SDE samplers for linear-Gaussian corruptions (docs/math.md, "The SDE view and correctors").

Per basis coefficient a linear-Gaussian corruption solves the forward SDE dx = f x dt + g dw with f = a'/a and
g^2 = (s^2)' - 2 f s^2 (:meth:`udm.LinearGaussian.sde`). For every eta >= 0 the reverse-time process

    dx = [f x - (1 + eta^2)/2 g^2 score(x, t)] dt + eta g dw                     (time running from 1 to 0)

has the marginals p_t (Song et al. 2021, eq. 6 and the probability-flow ODE, eq. 13, are eta = 1 and eta = 0;
Zhang & Chen 2023 and Karras et al. 2022, eq. 6, write the same family). score = (a x0_hat - x)/s^2 per
coefficient (Tweedie). Three rules discretise it:

* ``sde``: Euler-Maruyama, x_s = x_t - h [f x_t - (1 + eta^2)/2 g^2 score] + eta g sqrt(h) z, h = t - s.
  eta = 0 is the Euler step of the probability-flow ODE (``ode`` with ``solver=euler``), eta = 1 score_sde's
  ``EulerMaruyamaPredictor``. Weakly first order.

Where a_t = 0 (no information about x_0 left, as the cosine schedule at t = 1) f = a'/a and g^2 are infinite. Every
reverse process with eta > 0 forgets x_t there, so a step from such a time is taken exactly, x_s = a_s x0_hat + s_s z
(the posterior with a_{t|s} = 0); for eta = 0 the probability-flow velocity a' x0_hat + s' eps_hat stays finite.
* ``reverse_diffusion``: score_sde's ``ReverseDiffusionPredictor``: the forward step from s to t taken exactly,
  x_t = a_{t|s} x_s + s_{t|s} z, reversed: x_s = (2 - a_{t|s}) x_t + s_{t|s}^2 score + s_{t|s} z (for VP:
  (2 - sqrt(alpha_i)) x + beta_i score + sqrt(beta_i) z; for VE: x + (s_t^2 - s_s^2) score + ...).
* ``edm``: Karras et al. 2022, Algorithm 2 (stochastic Heun with "churn"), in their coordinates x~ = x/a and
  sigma = s/a per coefficient, where the probability-flow ODE is dx~/dsigma = eps_hat: churn raises the noise
  level to sigma^ = sigma (1 + gamma) with the exact forward transition, an Euler step in sigma (which is the DDIM
  step) goes to s, and Heun's correction averages eps_hat at both ends (not on the last step, which returns
  x0_hat). ``churn = 0`` is their deterministic Algorithm 1.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch

from .._schema import Interval
from ..errors import CapabilityError, ConfigError
from ._loop import Sampling
from ._requires import calls_per_step, requires

__all__ = ["sde", "reverse_diffusion", "edm", "scale_coefficients"]


def scale_coefficients(corruption: Any, x: torch.Tensor, k: Any) -> torch.Tensor:
    """B^T (k * B x) with k per basis coefficient (a number or a ``(1, *cshape)`` tensor)."""
    if not isinstance(k, torch.Tensor) or corruption.basis.identity or k.numel() == 1:
        return x * k
    return corruption.from_basis(corruption.to_basis(x) * k)


_scale = scale_coefficients


def _per_coefficient(v: torch.Tensor, like: torch.Tensor) -> Any:
    """A float64 coefficient ``(1, ...)`` for the data: a Python float when it is one number, else a tensor."""
    return float(v.reshape(-1)[0]) if v.numel() == 1 else v.to(device=like.device, dtype=like.dtype)


def _check_finite(run: Sampling, rule: str, coefficients: list[tuple[Any, ...]]) -> None:
    """Every step but the last to t = 0 needs finite coefficients."""
    for i, row in enumerate(coefficients):
        if not run.last(i) and not all(bool(torch.isfinite(torch.as_tensor(c)).all()) for c in row):
            name = getattr(run.corruption, "name", type(run.corruption).__name__)
            raise CapabilityError(
                f"sampler {rule!r}: the step's coefficients must be finite at every grid time; got a non-finite value "
                f"at t = {run.values[i]:g} with corruption {name!r} (the SDE's f = a'/a and g^2 need a' and s' there). "
                f"Check the corruption's amplitudes, or sample with ddim, ddpm or heun.")


def _affine_step(corruption: Any, x: torch.Tensor, x0: torch.Tensor, coefficients: tuple[Any, Any, Any],
                 generator: Any, noisy: bool) -> torch.Tensor:
    """x_s = B^T (k_x B x + k_0 B x0_hat + k_z B z) per basis coefficient, z ~ N(0, I) when ``noisy``."""
    kx, k0, kz = coefficients
    out = _scale(corruption, x, kx) + _scale(corruption, x0, k0)
    if noisy:
        out = out + _scale(corruption, torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), kz)
    return out


def _exact_where_uninformed(mt, ms, kx, k0, kz):
    """Where a_t = 0 (x_t holds nothing of x_0, e.g. cosine at t = 1) f and g^2 are infinite; the reverse process
    forgets x_t there, and the step is the exact one: x_s = a_s x0_hat + s_s z (the posterior with a_{t|s} = 0)."""
    live = mt.a64 > 0
    return (torch.where(live, kx, torch.zeros_like(kx)), torch.where(live, k0, ms.a64.expand_as(k0)),
            torch.where(live, kz, ms.s64.expand_as(kz)))


def _check_eta(eta: Any) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"sampler 'sde': eta must be a number >= 0; got {eta!r}. eta = 0 is the probability-flow "
                          f"ODE, eta = 1 the reverse SDE of Song et al. (2021); larger values add more noise.")
    return float(eta)


@calls_per_step(1)
@requires("linear_gaussian")
def sde(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
        eta: Annotated[float, Interval(ge=0)] = 1.0):
    """Euler-Maruyama on the reverse-SDE family dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dw (see the module
    docstring). ``eta``: >= 0; 0 is the probability-flow ODE (Euler), 1 the reverse SDE (score_sde).

    With score = (a x0_hat - x)/s^2 the step is x_s = k_x x + k_0 x0_hat + k_z z per basis coefficient,
    k_x = 1 - h f - h c g^2/s^2, k_0 = h c g^2 a/s^2, k_z = eta g sqrt(h), c = (1 + eta^2)/2, from (f, g^2) =
    :meth:`~udm.LinearGaussian.sde`. A step from a time where a = 0 is exact for eta > 0 (x_s = a_s x0_hat + s_s z)
    and the probability-flow Euler step for eta = 0 (k_x = 1 - h s'/s, k_0 = -h a', both finite)."""
    eta = _check_eta(eta)
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    c = (1 + eta * eta) / 2

    def table(mt, ms):
        f, g2 = corruption.sde(mt)
        h = (mt.t - ms.t).reshape(-1, *([1] * (f.ndim - 1)))
        s2 = mt.s64 ** 2
        kx, k0, kz = 1 - h * f - h * c * g2 / s2, h * c * g2 * mt.a64 / s2, eta * (h * g2).clamp_min(0).sqrt()
        if eta > 0:
            return _exact_where_uninformed(mt, ms, kx, k0, kz)
        live = mt.a64 > 0
        return (torch.where(live, kx, 1 - h * mt.ds64 / mt.s64), torch.where(live, k0, -h * mt.da64),
                torch.zeros_like(kz))

    coefficients = run.pair_table(table)
    _check_finite(run, "sde", coefficients)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x = run.final(pred) if run.last(i) else _affine_step(corruption, x, pred.x0_hat, coefficients[i], generator,
                                                              eta > 0)
        run.report(i, x, pred)
    return x


def _transition(mt, ms) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_{t|s}, s_{t|s}^2) float64 of the forward step x_t = a_{t|s} x_s + s_{t|s} z, per coefficient."""
    a_ts = mt.a64 / ms.a64
    return a_ts, mt.s64 ** 2 - a_ts ** 2 * ms.s64 ** 2


@calls_per_step(1)
@requires("linear_gaussian")
def reverse_diffusion(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """score_sde's reverse-diffusion predictor: x_s = (2 - a_{t|s}) x_t + s_{t|s}^2 score + s_{t|s} z, the reversed
    exact forward step (see the module docstring); needs s_t^2 >= a_{t|s}^2 s_s^2 on every step. A step from a time
    where a_t = 0 (the expansion behind the rule needs a_{t|s} near 1) is exact: x_s = a_s x0_hat + s_s z."""
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)

    def table(mt, ms):
        a_ts, var = _transition(mt, ms)
        s2 = mt.s64 ** 2
        return _exact_where_uninformed(mt, ms, 2 - a_ts - var / s2, var * mt.a64 / s2, var.clamp_min(0).sqrt()) + (var,)

    rows = run.pair_table(table)
    for i, row in enumerate(rows):
        if not run.last(i) and float(torch.as_tensor(row[3]).min()) < -1e-12:
            raise CapabilityError(
                f"sampler 'reverse_diffusion': the forward step's variance s_t^2 - a_t|s^2 s_s^2 must be >= 0 for every "
                f"basis coefficient; got {float(torch.as_tensor(row[3]).min()):.3g} from t = {run.values[i]:g} to "
                f"s = {run.values[i + 1]:g}. Use the sde or edm samplers, which need only the SDE.")
    coefficients = [row[:3] for row in rows]
    _check_finite(run, "reverse_diffusion", coefficients)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x = run.final(pred) if run.last(i) else _affine_step(corruption, x, pred.x0_hat, coefficients[i], generator,
                                                              True)
        run.report(i, x, pred)
    return x


# ---------------------------------------------------------------------------------------------- EDM
def _noise_levels(corruption: Any, grid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sigma = s/a at each time of ``grid`` ``(n,)`` for a corruption with one amplitude per time (inf where a = 0)."""
    tab = corruption.grid_table(grid, like, derivatives=False)
    a, s = tab.a64.reshape(len(grid), -1)[:, 0], tab.s64.reshape(len(grid), -1)[:, 0]
    return torch.where(a > 0, s / torch.where(a > 0, a, torch.ones_like(a)), torch.full_like(a, math.inf))


def _churn_times(corruption: Any, grid: torch.Tensor, like: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """t^ in [t, 1] with sigma(t^) = ``target`` per grid time (bisection; sigma increases with t; 1 when out of reach)."""
    lo, hi = grid.clone(), torch.ones_like(grid)
    for _ in range(48):  # 2^-48 ~ 4e-15 in t
        mid = (lo + hi) / 2
        below = _noise_levels(corruption, mid, like) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return hi


def _gammas(run: Sampling, churn: float, s_tmin: float, s_tmax: float | None) -> list[float]:
    """EDM's gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax (finite), else 0."""
    if churn == 0:
        return [0.0] * run.steps
    tab = run.table
    if tab.a64.numel() != tab.t.shape[0] or tab.s64.numel() != tab.t.shape[0]:
        name = getattr(run.corruption, "name", type(run.corruption).__name__)
        raise CapabilityError(
            f"sampler 'edm': churn > 0 needs one noise level sigma = s/a per time; got corruption {name!r}, whose "
            f"amplitudes differ per basis coefficient. Use churn=0 (EDM's deterministic Heun) or the sde sampler.")
    sigma = _noise_levels(run.corruption, run.grid, run.like)
    g = min(churn / run.steps, math.sqrt(2) - 1)
    top = math.inf if s_tmax is None else s_tmax
    return [g if (math.isfinite(v) and v > 0 and s_tmin <= v <= top) else 0.0 for v in sigma[:-1].tolist()]


def _check_edm(churn: Any, s_tmin: Any, s_tmax: Any, s_noise: Any) -> None:
    def number(v):
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    for key, value, ok, rule in (("churn", churn, number(churn) and churn >= 0, "a number >= 0"),
                                 ("s_tmin", s_tmin, number(s_tmin) and s_tmin >= 0, "a number >= 0"),
                                 ("s_tmax", s_tmax, s_tmax is None or (number(s_tmax) and s_tmax >= s_tmin),
                                  "a number >= s_tmin, or None (no upper bound)"),
                                 ("s_noise", s_noise, number(s_noise) and s_noise > 0, "a number > 0")):
        if not ok:
            raise ConfigError(f"sampler 'edm': {key} must be {rule}; got {value!r}. EDM's settings (Karras et al. "
                              f"2022, Table 5): churn 0 (deterministic) to 80, s_tmin 0.05, s_tmax 50, s_noise 1.003.")


@calls_per_step(2)
@requires("linear_gaussian")
def edm(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
        churn: Annotated[float, Interval(ge=0)] = 0.0, s_tmin: Annotated[float, Interval(ge=0)] = 0.0,
        s_tmax: Annotated[float, Interval(ge=0)] | None = None, s_noise: Annotated[float, Interval(gt=0)] = 1.0):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2; see the module docstring). Two model calls a
    step (one on the last). ``churn``: S_churn, the total extra noise (0: Algorithm 1); it is added only where
    ``s_tmin`` <= sigma <= ``s_tmax`` (None: no upper bound), with the noise scaled by ``s_noise``. The raised noise
    level is reached by moving the time up to t^ with sigma(t^) = sigma (1 + gamma) (at most t = 1), so churn needs
    one noise level per time. A step from a time where a = 0 (sigma infinite) is the Euler (DDIM) step."""
    _check_edm(churn, s_tmin, s_tmax, s_noise)
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    gammas = _gammas(run, float(churn), float(s_tmin), s_tmax)
    churned = [i for i, g in enumerate(gammas) if g > 0]
    hat = {}
    if churned:
        idx = torch.tensor(churned)
        sigma = _noise_levels(corruption, run.grid[idx], x_init)
        target = sigma * (1 + torch.tensor([gammas[i] for i in churned], dtype=torch.float64))
        hat = dict(zip(churned, _churn_times(corruption, run.grid[idx], x_init, target).tolist()))
    x = x_init
    for i in run:
        where: Any = i
        if i in hat:
            where = run.point(hat[i])
            x = _churn(corruption, x, run.points[i].marginal, where.marginal, float(s_noise), generator)
        pred = run.predict(x, where)
        if run.last(i):
            x = run.final(pred)
        else:
            eps1 = run.noise(x, pred.x0_hat, where)
            euler = run.forward(pred.x0_hat, eps1, i + 1)
            second = run.predict(euler, i + 1)
            eps2 = run.noise(euler, second.x0_hat, i + 1)
            mh = run.points[i].marginal if isinstance(where, int) else where.marginal
            x = euler + _scale(corruption, eps2 - eps1, _heun_weight(mh, run.points[i + 1].marginal, x_init))
        run.report(i, x, pred)
    return x


def _churn(corruption: Any, x: torch.Tensor, mt, mh, s_noise: float, generator) -> torch.Tensor:
    """x^ = a_{h|t} x + s_noise s_{h|t} z: the forward transition from t up to the churned time h."""
    a_ht, var = _transition(mh, mt)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _scale(corruption, x, _per_coefficient(a_ht, x)) + \
        _scale(corruption, z, _per_coefficient(s_noise * var.clamp_min(0).sqrt(), x))


def _heun_weight(mh, ms, like: torch.Tensor) -> Any:
    """(s_s - a_s sigma^)/2 per coefficient, the weight of eps_s - eps_t in Heun's correction (0 where a^ = 0)."""
    ok = mh.a64 > 0
    sigma = torch.where(ok, mh.s64 / torch.where(ok, mh.a64, torch.ones_like(mh.a64)), torch.zeros_like(mh.a64))
    return _per_coefficient(torch.where(ok, (ms.s64 - ms.a64 * sigma) / 2, torch.zeros_like(sigma)), like)
