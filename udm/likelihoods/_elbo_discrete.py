"""``elbo_discrete``: the K-step ELBO of a linear-Gaussian corruption with closed-form Gaussian KLs.

On a grid 1 = t_K > ... > t_1 > t_0 = 0 (the time type's K-step grid; Ho et al. 2020 eq. 5, Kingma et al.
2021 eq. 11), per example::

    -log p(x_0) <= KL(q(x_{t_K} | x_0) || p(x_1))                                   prior
                 + sum_{i=2..K} E_q KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p_theta(x_{t_{i-1}} | x_{t_i}))   diffusion
                 + E_q [-log p_theta(x_0 | x_{t_1})]                                  reconstruction

p_theta(x_s | x_t) is the posterior with x_0 drawn from q_theta = N(mean, Sigma_t): mean k_x x_t + k_0 mean,
variance std^2 + k_0^2 Sigma_t per basis coefficient (docs/math.md, "q_theta with a variance"), so every
variance source (small, large, an optimal-variance table, exact) gives its own bound. The prior and the
reconstruction are computed for every example; the K - 1 KL terms are summed exactly (``draws=None``) or
estimated from ``draws`` stratified steps per example.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch

from .._schema import Interval
from ..errors import ConfigError
from ._gaussian import (VarianceChoice, check_variance, decoder_nll, flat_sum, prior_kl, q_variance, rows,
                        step_variance)
from ._result import BatchNll
from ._spec import Context

__all__ = ["elbo_discrete", "resolve_discrete"]


def resolve_discrete(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    """Fill ``steps`` from the time type (its T for ``discrete``, else 1000) and check the variance choice."""
    out = dict(options)
    if out.get("steps") is None:
        out["steps"] = int(getattr(ctx.time_type, "steps", 1000))
    check_variance(out.get("variance", "large"), "likelihood elbo_discrete")
    return out


def _kl_terms(ctx: Context, x0: torch.Tensor, table: Any, j: torch.Tensor, variance: Any,
              generator: torch.Generator | None) -> torch.Tensor:
    """E_q KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)) ``(B,)`` (one draw of x_t) for the steps grid[j] -> grid[j+1]
    (s > 0), per example."""
    c = ctx.corruption
    mt, ms = rows(table, j, x0), rows(table, j + 1, x0)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = c.apply(mt, x0, eps)
    pred = ctx.predict(x_t, mt.t, generator)
    mean = (pred.mean if pred.mean is not None else pred.x0_hat).to(torch.float64)
    _, k0, std = c.posterior_coefficients(mt, ms)
    var_q = std ** 2
    var_p = step_variance(variance, mt, ms, k0, std, q_variance(variance, mt.t, x_t, pred))
    d2 = (k0 * c.to_basis(x0 - mean)) ** 2
    var_q, var_p = var_q.expand_as(d2), var_p.expand_as(d2)
    kl = 0.5 * (torch.log(var_p / var_q) + (var_q + d2) / var_p - 1)
    # a coefficient with no posterior noise (var_q = 0) has KL 0 only where p_theta is the same point mass
    point = var_q <= 0
    kl = torch.where(point, torch.where((var_p <= 0) & (d2 <= 0), torch.zeros_like(kl), torch.full_like(kl, torch.inf)),
                     kl)
    return flat_sum(kl)


def elbo_discrete(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None, *,
                  steps: Annotated[int, Interval(ge=1)] | None = None, spacing: str = "uniform",
                  variance: VarianceChoice = "large", draws: Annotated[int, Interval(ge=1)] | None = None) -> BatchNll:
    """The K-step ELBO (module docstring) for a batch ``x0 (B, *shape)``.

    Args:
        steps: K, the grid's steps (default: the time type's T for ``discrete``, else 1000).
        spacing: the time type's grid spacing (``uniform``, ``quadratic``, ``logsnr``, ...).
        variance: q_theta's variance: ``large`` (default), ``small``, ``model`` or a variance source.
        draws: ``None``: sum all K - 1 KL terms (K model calls per example); an integer m: estimate their sum
            from m stratified steps per example (m model calls), unbiased.
    """
    c = ctx.corruption
    x0 = x0.to(torch.float64)
    b = x0.shape[0]
    grid = ctx.time_type.grid(steps, spacing=spacing, corruption=c).to(torch.float64).cpu()
    k = grid.numel() - 1
    if float(grid[-1]) != 0.0:
        raise ConfigError(f"likelihood elbo_discrete: the time grid must end at t = 0; got {float(grid[-1]):.3g}. "
                          f"Use a time type whose grid ends at the data.")
    table = c.grid_table(grid, x0, derivatives=False)
    prior = prior_kl(c, x0, float(grid[0]), generator)
    # reconstruction: t_1 -> 0
    last = torch.full((b,), k - 1, dtype=torch.long)
    m1 = rows(table, last, x0)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x1 = c.apply(m1, x0, eps)
    pred = ctx.predict(x1, m1.t, generator)
    mean = (pred.mean if pred.mean is not None else pred.x0_hat).to(torch.float64)
    m0 = rows(table, last + 1, x0)
    _, k0, std = c.posterior_coefficients(m1, m0)
    var = step_variance(variance, m1, m0, k0, std, q_variance(variance, m1.t, x1, pred))
    recon = decoder_nll(c, x0, mean, var, ctx.quantisation)
    # diffusion: the K - 1 steps grid[j] -> grid[j + 1], j = 0 .. K - 2
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    if k > 1 and draws is None:
        for j in range(k - 1):
            diffusion += _kl_terms(ctx, x0, table, torch.full((b,), j, dtype=torch.long), variance, generator)
    elif k > 1:
        u = torch.rand((b, draws), generator=generator, dtype=torch.float64, device=x0.device)
        strata = (torch.arange(draws, dtype=torch.float64, device=x0.device) + u) / draws  # one draw per stratum
        js = (strata * (k - 1)).long().clamp(max=k - 2).cpu()
        for r in range(draws):
            diffusion += _kl_terms(ctx, x0, table, js[:, r], variance, generator) * ((k - 1) / draws)
    dims = torch.full((b,), float(x0[0].numel()), dtype=torch.float64)
    return BatchNll(prior, diffusion, recon, dims)
