"""``ode``: the probability-flow likelihood of a linear-Gaussian corruption (Song et al. 2021, §4.3 and App. D.2).

The probability-flow ODE carries p_t to p_1 deterministically; with x0_hat = mean(x_t) its velocity is, per basis
coefficient (docs/math.md, "Linear-Gaussian corruptions": a' x0_hat + s' eps_hat),

    v(x, t) = B^T [ (s'/s) B x - (a s'/s - a') B mean(x) ],
    div v   = sum_k s_k'/s_k - tr( B^T diag(a s'/s - a') B  d mean/dx ),

and d/dt log p_t(x_t) = -div v along a path, so

    log p_{t_min}(x_{t_min}) = log p_1(x_1) + int_{t_min}^1 div v(x_t, t) dt.

The trace is exact (one vector-Jacobian product per dimension) for small d, else Hutchinson's estimate
z^T J z with Rademacher probes z drawn in the basis and held fixed along the path (FFJORD; Grathwohl et al.
2019): Rademacher probes have no variance on a diagonal Jacobian, and near t_min the Jacobian is nearly
diagonal in the basis (d mean/dx ~ diag(1/a)), which is where the two terms of div v are large.

``start="data"`` evaluates the density of p_{t_min} at x_0 itself (score_sde's estimate: close to log p_0 for
smooth densities, not a bound). ``start="noised"`` starts at x_{t_min} ~ q(x_{t_min} | x_0) and adds the decoder
and the entropy of q(x_{t_min} | x_0): a bound on -log p(x_0) that keeps the truncated piece (docs/math.md,
"Likelihoods").
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch

from .._schema import Interval
from ..errors import ConfigError
from ._elbo_continuous import smallest_time
from ._gaussian import decoder_nll, flat_sum
from ._result import BatchNll
from ._solvers import integrate
from ._spec import Context

__all__ = ["ode", "resolve_ode", "EXACT_TRACE_DIMS"]

#: ``trace="auto"`` takes the exact trace up to this many dimensions per example, Hutchinson above
EXACT_TRACE_DIMS = 16


def resolve_ode(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    """Fill ``t_min`` from the time type."""
    out = dict(options)
    if out.get("t_min") is None:
        out["t_min"] = smallest_time(ctx.time_type)
    return out


def _rademacher(shape: tuple[int, ...], generator: torch.Generator | None, device: Any) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(torch.float64) * 2 - 1


class _Flow:
    """The augmented right-hand side (x, L) -> (v, div v) for one batch."""

    def __init__(self, ctx: Context, shape: tuple[int, ...], probes: torch.Tensor | None,
                 generator: torch.Generator | None) -> None:
        self.ctx, self.c, self.shape, self.generator = ctx, ctx.corruption, shape, generator
        self.probes = probes  # (P, B, *shape) in data space, or None for the exact trace
        self.d = math.prod(shape[1:])

    def _directions(self, like: torch.Tensor) -> torch.Tensor:
        """The exact trace's directions: the basis vectors B^T e_i in data space ``(d, B, *shape)``."""
        eye = torch.eye(self.d, dtype=torch.float64, device=like.device).reshape(self.d, *self.shape[1:])
        return self.c.from_basis(eye)[:, None].expand(self.d, *self.shape)

    def __call__(self, t: float, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = state[0]
        c = self.c
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        m = c.marginal(tt[:1], x)
        lam = m.ds64 / m.s64  # s'/s
        gain = m.a64 * lam - m.da64  # a s'/s - a'
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            mean = self.ctx.mean(xg, tt, self.generator, grad=True)
            w = c.from_basis(gain.to(mean.device) * c.to_basis(mean))  # B^T diag(gain) B mean(x)
            directions = self.probes if self.probes is not None else self._directions(x)
            trace = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            for i, z in enumerate(directions):
                (vjp,) = torch.autograd.grad(w, xg, z, retain_graph=i + 1 < len(directions))
                trace += flat_sum(vjp * z)
        if self.probes is not None:
            trace = trace / len(directions)
        v = c.from_basis(lam * c.to_basis(x)) - w.detach()
        div = flat_sum(lam.expand(1, *self.shape[1:])).expand(x.shape[0]) - trace
        return v, div


def ode(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None, *,
        t_min: Annotated[float, Interval(gt=0, lt=1)] | None = None,
        solver: Literal["rk45", "euler", "heun", "rk4"] = "rk45", steps: Annotated[int, Interval(ge=1)] = 100,
        rtol: Annotated[float, Interval(gt=0)] = 1e-5, atol: Annotated[float, Interval(gt=0)] = 1e-5,
        trace: Literal["auto", "exact", "hutchinson"] = "auto", probes: Annotated[int, Interval(ge=1)] = 1,
        start: Literal["data", "noised"] = "data") -> BatchNll:
    """The probability-flow NLL (module docstring) of a batch ``x0 (B, *shape)``.

    Args:
        t_min: where the flow starts (default: the time type's smallest time).
        solver: ``rk45`` (adaptive Dormand-Prince with ``rtol``, ``atol``) or fixed ``euler``/``heun``/``rk4`` with
            ``steps`` uniform steps.
        trace: ``exact`` (d vector-Jacobian products per evaluation), ``hutchinson`` (``probes`` Rademacher
            probes), ``auto`` (exact up to 16 dimensions).
        start: ``data`` (the density of p_{t_min} at x_0) or ``noised`` (a bound with the decoder and entropy).
    """
    c = ctx.corruption
    x0 = x0.to(torch.float64)
    b, d = x0.shape[0], x0[0].numel()
    if start == "noised" and ctx.quantisation is not None:
        raise ConfigError("likelihood ode: start 'noised' must use a density decoder; got a discretised one. Use "
                          "dequantisation 'uniform' (the default for ode).")
    recon = torch.zeros(b, dtype=torch.float64, device=x0.device)
    tm = torch.full((b,), t_min, dtype=torch.float64, device=x0.device)
    x = x0
    if start == "noised":
        m = c.marginal(tm, x0, derivatives=False)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = c.apply(m, x0, eps)
        mean = ctx.mean(x, tm, generator)
        var = m.s64 ** 2  # the decoder N(mean, s(t_min)^2): 'large' at s = 0
        entropy = flat_sum((0.5 * torch.log(2 * math.pi * math.e * m.s64 ** 2)).expand_as(x0))
        recon = decoder_nll(c, x0, mean, var, None) - entropy
    exact = trace == "exact" or (trace == "auto" and d <= EXACT_TRACE_DIMS)
    z = None
    if not exact:
        z = c.from_basis(_rademacher((probes * b, *x0.shape[1:]), generator, x0.device)).reshape(probes, *x0.shape)
    flow = _Flow(ctx, tuple(x0.shape), z, generator)
    solved = integrate(flow, (x, torch.zeros(b, dtype=torch.float64, device=x0.device)), t_min, 1.0,
                       solver=solver, steps=steps, rtol=rtol, atol=atol)
    x1, integral = solved.state
    prior = -c.prior_logp(x1).to(torch.float64)
    dims = torch.full((b,), float(d), dtype=torch.float64)
    return BatchNll(prior, -integral, recon, dims)
