"""Error-controlled integration of the probability-flow ODE (docs/math.md, "Adaptive ODE sampling").

The ODE is dx/dt = d/dt F_t(x0_hat, eps_hat) (the ``ode`` rule's velocity), integrated in u = sqrt(t): every
schedule's noise amplitude behaves like sqrt(t) near t = 0 (sigma' is unbounded there), which the substitution
makes smooth, dx/du = 2 u dx/dt. An embedded Runge-Kutta pair (Bogacki & Shampine 1989, 3(2); Dormand & Prince
1980, 5(4); Hairer, Norsett & Wanner, "Solving ODEs I", II.4 for the step control) estimates each step's local
error from the difference of its two solutions and accepts the step when

    err = sqrt(mean(((x_high - x_low) / (atol + rtol max(|x|, |x_new|)))^2)) <= 1,

over the whole batch, choosing the next step h * clamp(0.9 err^(-1/(p + 1)), 0.2, 5) (p: the lower order).
Both pairs are FSAL: the last stage of an accepted step is the first of the next, so a step costs 3 (bs3) or
6 (dopri5) model calls. The integration runs from the grid's first time to its last time before 0; the last
step returns the prediction made there (no extra call). ``SamplerStep.nfe`` counts the calls.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from ..errors import ConfigError, UdmError, did_you_mean
from ._loop import Sampling, SamplerStep
from ._requires import calls_per_step, requires

__all__ = ["adaptive", "TABLEAUX"]

#: name -> (c, a (lower triangle), b (higher order), b_low (embedded), lower order); both FSAL
TABLEAUX: dict[str, tuple[list[float], list[list[float]], list[float], list[float], int]] = {
    "bs3": ([0, 1 / 2, 3 / 4, 1],
            [[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
            [2 / 9, 1 / 3, 4 / 9, 0], [7 / 24, 1 / 4, 1 / 3, 1 / 8], 2),
    "dopri5": ([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
               [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
                [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
                [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
                [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
               [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
               [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40], 4),
}


def _combine(x: torch.Tensor, h: float, coeffs: list[float], ks: list[torch.Tensor]) -> torch.Tensor:
    out = x
    for c, k in zip(coeffs, ks):
        if c:
            out = torch.add(out, k, alpha=h * c)
    return out


@calls_per_step(None)  # error control picks the steps; max_calls bounds the calls
@requires("linear_gaussian")
def adaptive(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
             method: Literal["bs3", "dopri5"] = "bs3", rtol: float = 1e-3, atol: float = 1e-3,
             max_calls: int = 10_000):
    """Adaptive probability-flow ODE sampling (see the module docstring).

    Args:
        method: ``bs3`` (Bogacki-Shampine 3(2), 3 calls a step) or ``dopri5`` (Dormand-Prince 5(4), 6).
        rtol, atol: the tolerances of the error test (relative to |x|, and absolute).
        max_calls: stop with an error when the integration needs more model calls than this.

    Only the grid's first time and its last time before 0 are used (to integrate down to the time type's
    smallest time, give ``times=[1.0, t_min, 0.0]`` to ``udm.sample``); the callback receives every accepted step, with ``steps`` = the steps taken so far.
    """
    if method not in TABLEAUX:
        raise ConfigError(f"sampler 'adaptive': method must be one of {', '.join(TABLEAUX)}; got {method!r}."
                          f"{did_you_mean(str(method), TABLEAUX)}")
    if not (rtol > 0 and atol > 0):
        raise ConfigError(f"sampler 'adaptive': rtol and atol must be > 0; got rtol={rtol!r}, atol={atol!r}.")
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    if run.corrector is not None:
        raise ConfigError(f"sampler 'adaptive': corrector must be None (the error control chooses the steps, and a "
                          f"corrector moving x between them would void its error estimate); got "
                          f"{run.corrector.name!r}. Use a fixed-grid sampler (ddim, dpm++2m, ...) with a corrector.")
    ends_at_zero = run.values[-1] == 0.0
    t_end = run.values[-2] if ends_at_zero else run.values[-1]
    if ends_at_zero and run.steps < 2:
        raise ConfigError(f"sampler 'adaptive': the grid must have a time > 0 before t = 0 to integrate to; got "
                          f"{run.values}. Use steps >= 2, or times=[1.0, t_min, 0.0].")
    c, a, b, b_low, order_low = TABLEAUX[method]
    last: list[Any] = [None]

    u, u_end, x = math.sqrt(run.values[0]), math.sqrt(t_end), x_init

    def time(v: float) -> float:  # the grid's own values at the ends, exactly
        return run.values[0] if v == math.sqrt(run.values[0]) else t_end if v == u_end else v * v

    def f(v: float, x: torch.Tensor) -> torch.Tensor:
        if run.nfe >= max_calls:
            raise UdmError(f"sampler 'adaptive': the model calls must stay within max_calls={max_calls}; got more "
                           f"at t = {time(v):.6g}. Loosen rtol/atol or raise max_calls.")
        p = run.point(time(v)) if time(v) != run.values[0] else 0
        pred = run.predict(x, p)
        last[0] = pred
        return 2 * v * run.velocity(pred.x0_hat, run.noise(x, pred.x0_hat, p), p)

    k1 = f(u, x)
    scale = atol + rtol * x.abs()
    d0, d1 = float((x / scale).pow(2).mean().sqrt()), float((k1 / scale).pow(2).mean().sqrt())
    h = -min(abs(u_end - u), 0.01 * d0 / d1 if d1 > 1e-5 and d0 > 1e-5 else 1e-2 * abs(u_end - u))
    taken = 0
    while u > u_end:
        landing = u + h <= u_end or u + h - u_end < 1e-12 * u_end  # h < 0: land exactly on the end, never past it
        if landing:
            h = u_end - u
        u_next = u_end if landing else u + h
        ks = [k1]
        for j in range(1, len(c)):
            ks.append(f(u_next if c[j] == 1 else u + c[j] * h, _combine(x, h, a[j], ks)))
        x_new = _combine(x, h, b, ks)  # FSAL: the last stage was evaluated at x_new
        x_low = _combine(x, h, b_low, ks)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err = float(((x_new - x_low) / scale).pow(2).mean().sqrt())
        if not math.isfinite(err):  # a smaller step cannot cure a model that returns NaN/inf at a finite input
            _check_finite_stages(ks, x, [u_next if c[j] == 1 else u + c[j] * h for j in range(len(c))], time)
        if err <= 1.0:
            t, u, x, k1 = time(u), u_next, x_new, ks[-1]
            if run.callback is not None:
                run.callback(SamplerStep(taken, taken + 1, t, time(u), x, last[0].x0_hat, run.nfe))
            taken += 1
        h = h * min(5.0, max(0.2, 0.9 * (err if err > 0 else 1e-10) ** (-1.0 / (order_low + 1))))
    if not ends_at_zero:
        return x
    pred = last[0]  # the FSAL stage at the accepted end point
    x = run.final(pred)
    if run.callback is not None:
        run.callback(SamplerStep(taken, taken + 1, t_end, 0.0, x, pred.x0_hat, run.nfe))
    return x


def _check_finite_stages(ks: list[Any], x: torch.Tensor, nodes: list[float], time: Any) -> None:
    """The first stage whose velocity is non-finite although x and every earlier stage are finite (so its input
    was finite) is the model's fault: raise instead of shrinking the step until max_calls."""
    if not bool(torch.isfinite(x).all()):
        return
    for j, k in enumerate(ks):
        if not bool(torch.isfinite(k).all()):
            raise UdmError(f"sampler 'adaptive': the model's predictions must be finite; got NaN/inf at t = "
                           f"{time(nodes[j]):.6g} from a finite x_t. Check the model (its weights, its output at "
                           f"this time) and the corruption's schedule there.")
