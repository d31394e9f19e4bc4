"""The per-step weights of the multistep solvers, computed once on a whole grid (docs/math.md, "Fast solvers").

All three solvers are ``invert`` with x0_hat replaced by a weighted sum D of the prediction history, per basis
coefficient k in its half log-SNR lambda_k = log(a_k / s_k). For step i (grid point i to i + 1) write
h = lambda_{i+1} - lambda_i > 0 and the history nodes d_j = lambda_{i-j} - lambda_i < 0 (d_0 = 0):

* DPM-Solver++ (Lu et al. 2022, Algorithm 2 and its 3M): x_0(lambda) is extrapolated by the polynomial through
  the last q predictions and integrated exactly against the exponential integrator's kernel, density
  proportional to exp(-c (h - v)) on v = lambda - lambda_i in [0, h] (c = 1: the ODE; c = 2: the SDE; in general
  c = h_eff / h with exp(-h_eff) the coefficient of x_t times exp(-h), see :func:`effective_rate`). Second order
  uses the paper's midpoint weights (1 + u/2, -u/2), u = h / (lambda_i - lambda_{i-1}).
* DEIS tAB in log rho (Zhang & Chen 2023, eq. 14; diffusers' ``logrho``): the same for the noise prediction, whose
  kernel is exp(-v) on [0, h]; the step is ``invert`` with the x0 that explains x_t with the extrapolated noise.
* UniPC (Zhao et al. 2023, Algorithms 2-3, B(h) = h (bh1) or e^h - 1 (bh2)): predictor UniP-p and corrector
  UniC-p, transcribed from the reference implementation's linear system.

Nodes whose log-SNR is infinite (a_k = 0 at t = 1 on cosine or flow; s_k = 0) carry no information about the
trend: they are dropped, which lowers that coefficient's order (the limit of the formulas as the node's lambda
tends to -inf); a step from such a node puts all weight on the newest prediction (the h -> inf limit). Everything here is float64 on the CPU; :func:`plan` casts the result for the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..linear_gaussian import Marginal

__all__ = ["StepPlan", "plan", "step_orders", "half_log_snr", "dpm_weights", "deis_weights", "unipc_weights",
           "effective_rate"]

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------ moments of the kernels
def _incomplete_gamma(j: int, big_h: Tensor) -> Tensor:
    """I_j(H) = int_0^H x^j e^{-x} dx for H >= 0 (float64): a series below 1, the closed form above (both to
    rounding level; the closed form cancels for small H, the series converges slowly for large H)."""
    small = big_h.clamp(max=1.0)
    series = torch.zeros_like(big_h)
    term = small ** (j + 1)  # (-1)^n H^(n+j+1) / n!
    for n in range(30):
        series = series + term / (n + j + 1)
        term = -term * small / (n + 1)
    e = torch.exp(-big_h)
    poly = sum(big_h**i / math.factorial(i) for i in range(j + 1))
    closed = math.factorial(j) * (1 - e * poly) if j else -torch.expm1(-big_h)
    return torch.where(big_h < 1.0, series, closed)


def _decay_moments(h: Tensor, rate: Tensor | float, kmax: int) -> list[Tensor]:
    """E[w^k], k = 0..kmax, for w in [0, h] with density proportional to exp(-rate w) (rate > 0)."""
    big_h = rate * h
    i0 = _incomplete_gamma(0, big_h)
    return [torch.ones_like(h)] + [_incomplete_gamma(k, big_h) / i0 / rate**k for k in range(1, kmax + 1)]


def _lagrange(moments: list[Tensor], d: list[Tensor]) -> list[Tensor]:
    """E[L_j(v)] for the Lagrange basis L_j on the nodes 0, d_1, .. (q <= 3), v with the given moments E[v^k]."""
    q = len(d) + 1
    if q == 1:
        return [torch.ones_like(moments[0])]
    e1 = moments[1]
    if q == 2:
        w1 = e1 / d[0]
        return [1 - w1, w1]
    e2, (d1, d2) = moments[2], d
    w1 = (e2 - d2 * e1) / (d1 * (d1 - d2))
    w2 = (e2 - d1 * e1) / (d2 * (d2 - d1))
    return [1 - w1 - w2, w1, w2]


# ---------------------------------------------------------------------------------------- the three solvers
def effective_rate(h: Tensor, eta: float) -> Tensor:
    """c = h_eff / h, where exp(-h_eff) = keep * exp(-h) is the coefficient of (s_s/s_t) x_t in a DDIM-eta step
    with keep = sqrt(1 - eta^2 + eta^2 exp(-2h)): 1 for eta = 0 (the ODE), 2 for eta = 1 (the SDE)."""
    if eta == 0:
        return torch.ones_like(h)
    keep = torch.sqrt((1 - eta * eta) + eta * eta * torch.exp(-2 * h))
    return 1 - torch.log(keep) / h


def dpm_weights(q: int, h: Tensor, d: list[Tensor], *, eta: float = 0.0) -> list[Tensor]:
    """DPM-Solver++ weights on (x0_i, x0_{i-1}, ...) for order q (docs/math.md, "Fast solvers").

    q = 2: the paper's midpoint rule D = x0_i + (u/2)(x0_i - x0_{i-1}), u = h / (lambda_i - lambda_{i-1}) (Lu et
    al. 2022, Algorithm 2). q = 3: the quadratic through the last three predictions integrated exactly against the
    kernel exp(-c (h - v)) (c from :func:`effective_rate`). This is Lu et al.'s 3M update, D = x0_i + (phi_2/gamma)
    D1 - (phi_3/gamma) 2 D2 with their divided differences D1, D2; the reference implementations (DPM-Solver's and
    diffusers' ``multistep_dpm_solver_third_order_update``, k-diffusion's ``sample_dpmpp_3m_sde``) weight D2 once,
    not twice, which integrates a quadratic x0(lambda) with half its second-order term, so their 3M converges at
    second order only (tests/test_multistep.py measures both).
    """
    if q == 1:
        return [torch.ones_like(h)]
    if q == 2:
        u = -h / d[0]
        return [1 + u / 2, -u / 2]
    ew = _decay_moments(h, effective_rate(h, eta), 2)  # of w = h - v
    return _lagrange([ew[0], h - ew[1], h * h - 2 * h * ew[1] + ew[2]], d)


#: DEIS extrapolates the noise, and an error in it reaches x_s amplified by e^h - 1 (x_s = (a_s/a_t)(x_t - s_t E) +
#: s_s E); where one step raises a coefficient's log-SNR by more than this (a blur's high frequencies), DEIS takes
#: the first-order step (e^5 - 1 ~ 150; Gaussian grids of 5 or more steps stay below it)
DEIS_MAX_H = 5.0


def deis_weights(q: int, h: Tensor, d: list[Tensor]) -> list[Tensor]:
    """DEIS (tAB, log rho) weights on (eps_i, eps_{i-1}, ...): the average of the Lagrange basis under exp(-v);
    first order where h > :data:`DEIS_MAX_H`."""
    w = _lagrange(_decay_moments(h, torch.ones_like(h), max(q - 1, 0)), d)
    far = h > DEIS_MAX_H
    return [torch.where(far, torch.full_like(wj, float(j == 0)), wj) for j, wj in enumerate(w)]


def unipc_weights(q: int, h: Tensor, d: list[Tensor], *, variant: str, corrector: bool) -> list[Tensor]:
    """UniPC (data prediction) weights of order q.

    Predictor UniP-q: on (x0_i, x0_{i-1}, .., x0_{i-q+1}). Corrector UniC-q: on (x0_{i+1}, x0_i, .., x0_{i-q+1}),
    where x0_{i+1} is the prediction made at the predictor's result (the call the next step makes anyway).
    """
    k = h.shape[0]
    rks = [dj / h for dj in d] + [torch.ones_like(h)]  # r_k = (lambda_{i-k} - lambda_i) / h, then 1
    hh = -h
    h_phi_1 = torch.expm1(hh)  # -(1 - e^{-h})
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, fact = [], [], 1
    for j in range(1, q + 1):
        rows.append(torch.stack([r ** (j - 1) for r in rks], -1))
        b.append(h_phi_k * fact / b_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    big_r, b = torch.stack(rows, -2), torch.stack(b, -1)  # (K, q, q), (K, q)
    scale = b_h / h_phi_1
    if corrector:
        rhos = torch.full((k, 1), 0.5, dtype=h.dtype) if q == 1 else torch.linalg.solve(big_r, b)
        w_new = scale * rhos[:, -1]
        w_hist = [scale * rhos[:, j] / rks[j] for j in range(q - 1)]
        return [w_new, 1 - w_new - sum(w_hist, torch.zeros_like(h)), *w_hist]
    if q == 1:
        return [torch.ones_like(h)]
    rhos = torch.full((k, 1), 0.5, dtype=h.dtype) if q == 2 else torch.linalg.solve(big_r[:, :-1, :-1], b[:, :-1])
    w_hist = [scale * rhos[:, j] / rks[j] for j in range(q - 1)]
    return [1 - sum(w_hist, torch.zeros_like(h)), *w_hist]


# ------------------------------------------------------------------------------------------------ the plan
def half_log_snr(table: Marginal) -> tuple[Tensor, tuple[int, ...]]:
    """lambda = log(a) - log(s) ``(n, K)`` float64 (+-inf where s or a is 0) and the coefficient shape."""
    a, s = torch.broadcast_tensors(table.a64, table.s64)
    lam = torch.log(a) - torch.log(s)
    return lam.reshape(lam.shape[0], -1), tuple(lam.shape[1:])


def step_orders(steps: int, order: int, lower_order_final: bool, final_below: int | None) -> list[int]:
    """The order of each step: warm-up min(order, i + 1); with ``lower_order_final`` the last steps lower it to
    at most ``steps - i`` (only when ``steps < final_below``, if given: diffusers' DPM-Solver and DEIS rule)."""
    out = []
    for i in range(steps):
        o = min(order, i + 1)
        if lower_order_final and (final_below is None or steps < final_below):
            o = min(o, steps - i)
        out.append(o)
    return out


@dataclass
class StepPlan:
    """The weights of one step, cast for the data (Python floats for scalar coefficients, else tensors
    ``(1, *cshape)`` in the corruption's basis). ``x0``: on the x0-history (newest first); ``eps``: DEIS's k_j on
    (eps_i - eps_{i-j}), j >= 1; ``corrector``: UniC's weights on (x0_{i+1}, x0_i, ..) or ``None``."""

    order: int
    x0: tuple[Any, ...]
    eps: tuple[Any, ...] = ()
    corrector: tuple[Any, ...] | None = None


WeightFn = Callable[[int, Tensor, list[Tensor]], list[Tensor]]


def _all_steps(fn: WeightFn, lam: Tensor, orders: Tensor) -> Tensor:
    """The weights of every step at once, ``(L, S, K)`` for S steps and K coefficients (L = the largest order, + 1
    for a corrector): step i and coefficient k use the order min(orders[i], the finite nodes ending at i), and a
    step from or to an infinite log-SNR puts all weight on the newest prediction (the h -> inf limit of every
    formula here: the kernel concentrates at the step's end; for a predictor the newest is all it has)."""
    n, k = lam.shape
    idx = torch.arange(n)[:, None].expand(n, k)
    last_bad = torch.cummax(torch.where(torch.isfinite(lam), torch.full_like(idx, -1), idx), dim=0).values
    run_len = (idx - last_bad)[:-1]  # consecutive finite nodes ending at each step's start
    lam_i, h = lam[:-1], lam[1:] - lam[:-1]
    finite = torch.isfinite(h) & torch.isfinite(lam_i)
    q = torch.where(finite, torch.minimum(run_len, orders[:, None]), torch.ones_like(run_len))
    safe_h = torch.where(finite, h, torch.ones_like(h)).reshape(-1)
    ws = []
    for qq in range(1, int(orders.max()) + 1):  # invalid nodes get distinct dummies; no coefficient selects them
        d = []
        for j in range(1, qq):
            back = torch.cat([torch.full((j, k), float("nan"), dtype=lam.dtype), lam_i[:-j]]) - lam_i
            d.append(torch.where(torch.isfinite(back) & finite, back, torch.full_like(back, -float(j))).reshape(-1))
        ws.append(torch.stack(fn(qq, safe_h, d)).reshape(-1, *h.shape))
    out = torch.zeros_like(ws[-1])
    for qq, w in enumerate(ws, start=1):
        out[: w.shape[0]] = torch.where(q == qq, w, out[: w.shape[0]])
    out[:, ~finite] = 0.0
    out[0, ~finite] = 1.0
    return out


def plan(table: Marginal, like: Tensor, weights: WeightFn, orders: list[int], *, eps_history: bool = False,
         corrector: WeightFn | None = None) -> tuple[list[StepPlan], bool]:
    """The :class:`StepPlan` of every step of a grid whose coefficient table is ``table`` ``(steps + 1, ...)``.

    ``weights(q, h, d)``: the solver's weights of order q; ``orders``: each step's order; ``eps_history``: the
    weights act on the noise history (DEIS), else on the x0 history; ``corrector(q, h, d)``: UniC's weights.
    All steps are computed at once (a few dozen small tensor ops per sampler call, none per step). Returns the
    plans and whether the weights are per basis coefficient (tensors) rather than scalars.
    """
    lam, cshape = half_log_snr(table)
    steps = lam.shape[0] - 1
    q = torch.tensor(orders[:steps], dtype=torch.long)
    w = _all_steps(weights, lam, q)
    corr = _all_steps(corrector, lam, q) if corrector is not None else None
    eps = None
    if eps_history:  # x0' = x0_i + sum_j rho_i w_j (eps_i - eps_{i-j}), rho_i = s_i / a_i
        eps = torch.where(w[1:] == 0, torch.zeros_like(w[1:]), torch.exp(-lam[:-1]) * w[1:])
        w = torch.cat([torch.ones_like(w[:1]), torch.zeros_like(w[1:])])
    scalar = lam.shape[1] == 1

    def cast(ws: Tensor | None, i: int, n: int) -> tuple:
        if ws is None:
            return ()
        if scalar:
            return tuple(ws[:n, i, 0].tolist())
        return tuple(v.reshape(1, *cshape).to(device=like.device, dtype=like.dtype) for v in ws[:n, i])

    plans = [StepPlan(o, cast(w, i, 1 if eps_history else o), cast(eps, i, o - 1),
                      cast(corr, i, o + 1) if corr is not None and i + 1 < steps else None)
             for i, o in enumerate(orders[:steps])]
    return plans, not scalar
