"""Integrators for the probability-flow likelihood: fixed-step Euler, Heun and RK4, and adaptive Dormand-Prince
5(4) (Dormand & Prince 1980; the error control of Hairer, Norsett & Wanner, "Solving ODEs I", II.4).

The state is a tuple of tensors (the data and the running log-density); the right-hand side maps
``(t, state) -> derivatives``. One step size is shared by the batch; the error norm is the root mean square of
err / (atol + rtol max(|y|, |y_new|)) over every element of the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UdmError

__all__ = ["integrate", "Solved", "FIXED"]

State = tuple[torch.Tensor, ...]
Rhs = Callable[[float, State], State]

#: fixed-step solvers: tableau rows (c, a-row) and weights b
FIXED: dict[str, tuple[tuple[tuple[float, tuple[float, ...]], ...], tuple[float, ...]]] = {
    "euler": (((0.0, ()),), (1.0,)),
    "heun": (((0.0, ()), (1.0, (1.0,))), (0.5, 0.5)),
    "rk4": (((0.0, ()), (0.5, (0.5,)), (0.5, (0.0, 0.5)), (1.0, (0.0, 0.0, 1.0))), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}

_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


class SolverError(UdmError, RuntimeError):
    """The adaptive solver could not reach the end within its step budget."""


@dataclass
class Solved:
    state: State
    evaluations: int  #: right-hand-side evaluations made
    steps: int  #: accepted steps


def _axpy(y: State, h: float, ks: list[State], weights: tuple[float, ...]) -> State:
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for w, k in zip(weights, ks):
            if w:
                acc = acc + (h * w) * k[i]
        out.append(acc)
    return tuple(out)


def _fixed(rhs: Rhs, y: State, t0: float, t1: float, steps: int, method: str) -> Solved:
    rows, b = FIXED[method]
    h = (t1 - t0) / steps
    for n in range(steps):
        t = t0 + n * h
        ks: list[State] = []
        for c, a in rows:
            ks.append(rhs(t + c * h, _axpy(y, h, ks, a)))
        y = _axpy(y, h, ks, b)
    return Solved(y, steps * len(rows), steps)


def _norm(err: State, y: State, y_new: State, rtol: float, atol: float) -> float:
    total, count = 0.0, 0
    for e, a, b in zip(err, y, y_new):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        total += float((e / scale).square().sum())
        count += e.numel()
    return (total / max(count, 1)) ** 0.5


def _adaptive(rhs: Rhs, y: State, t0: float, t1: float, rtol: float, atol: float, max_steps: int) -> Solved:
    t, h = t0, (t1 - t0) / 100
    k1 = rhs(t, y)
    evals, accepted = 1, 0
    for _ in range(max_steps):
        if t >= t1:
            return Solved(y, evals, accepted)
        h = min(h, t1 - t)
        ks = [k1]
        for c, a in zip(_DP_C[1:], _DP_A[1:]):
            ks.append(rhs(t + c * h, _axpy(y, h, ks, a)))
        evals += 6
        y_new = _axpy(y, h, ks, _DP_B5)
        err = tuple(h * sum((b5 - b4) * k[i] for b5, b4, k in zip(_DP_B5, _DP_B4, ks)) for i in range(len(y)))
        norm = _norm(err, y, y_new, rtol, atol)
        if norm <= 1.0:
            t, y, k1 = t + h if t1 - t > h else t1, y_new, ks[-1]  # first same as last
            accepted += 1
        factor = 10.0 if norm == 0 else min(10.0, max(0.2, 0.9 * norm ** -0.2))
        h = h * factor
        if h < 1e-14 * max(abs(t), 1.0):
            raise SolverError(f"likelihood ode: the adaptive solver's step must stay above rounding level; got "
                              f"{h:.3g} at t = {t:.12g} (the velocity is not smooth there: check the corruption's "
                              f"amplitude derivatives near t). Use a fixed-step solver or loosen rtol/atol.")
    if t >= t1:  # the last allowed step reached the end
        return Solved(y, evals, accepted)
    raise SolverError(f"likelihood ode: the adaptive solver must reach t = {t1} within {max_steps} steps; got to "
                      f"t = {t:.6g}. Loosen rtol/atol, raise t_min, or use a fixed-step solver.")


def integrate(rhs: Rhs, y0: State, t0: float, t1: float, *, solver: str = "rk45", steps: int = 100,
              rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 100_000) -> Solved:
    """Integrate dy/dt = rhs(t, y) from t0 to t1 > t0: ``rk45`` (adaptive) or a fixed-step method of ``FIXED``
    with ``steps`` uniform steps."""
    if solver == "rk45":
        return _adaptive(rhs, y0, t0, t1, rtol, atol, max_steps)
    return _fixed(rhs, y0, t0, t1, steps, solver)
