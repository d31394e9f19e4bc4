"""``elbo_continuous``: the continuous-time ELBO of a linear-Gaussian corruption (VDM, Kingma et al. 2021 eq. 17).

As the grid of ``elbo_discrete`` becomes fine, the K - 1 KL terms tend to an integral over t in [t_min, 1]; per
basis coefficient k with SNR_k = a_k^2 / s_k^2::

    diffusion = 1/2 int_{t_min}^1 sum_k (-d SNR_k/dt) E_q [((B x_0)_k - (B mean(x_t))_k)^2] dt,

independent of q_theta's variance (its contribution vanishes with the step). The prior KL at t = 1 and the
decoder -log p(x_0 | x_{t_min}) close the bound (the decoder is what keeps it a bound when t is truncated:
docs/math.md, "Likelihoods"). t is drawn per example, ``draws`` times, stratified or antithetic in
[t_min, 1], so each example's estimate is unbiased and independent of the others. Near t = 0 the integrand
grows like 1/t for every built-in schedule (-d SNR/dt ~ 1/t^2 times an error ~ t), so by default t is drawn
log-uniformly, t = t_min^(1 - u), and weighted by t log(1/t_min): an importance density with a bounded weight
(``t_density="uniform"`` draws t uniformly, with a variance that grows like log(1/t_min)/t_min).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch

from .._schema import Interval
from ..errors import ConfigError
from ._gaussian import VarianceChoice, check_variance, decoder_nll, flat_sum, prior_kl, q_variance, step_variance
from ._result import BatchNll
from ._spec import Context

__all__ = ["elbo_continuous", "resolve_continuous", "smallest_time", "draw_times"]


def smallest_time(time_type: Any) -> float:
    """The smallest time a model was trained at: ``t_min`` of a continuous time type (1e-4 if it is 0), 1/T for
    a discrete one."""
    t_min = getattr(time_type, "t_min", None)
    if t_min is not None:
        return float(t_min) if t_min > 0 else 1e-4
    steps = getattr(time_type, "steps", None)
    return 1.0 / steps if steps else 1e-3


def resolve_continuous(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    """Fill ``t_min`` from the time type; check the variance and the antithetic pairs."""
    out = dict(options)
    if out.get("t_min") is None:
        out["t_min"] = smallest_time(ctx.time_type)
    check_variance(out.get("variance", "large"), "likelihood elbo_continuous")
    if out.get("t_sampling") == "antithetic" and out.get("draws", 8) % 2:
        raise ConfigError(f"likelihood elbo_continuous: draws must be even for antithetic t (pairs t, 1 - t); got "
                          f"{out['draws']}. Use an even number or t_sampling 'stratified'.")
    return out


def draw_times(b: int, draws: int, how: str, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    """u ``(B, draws)`` in [0, 1): independent (``uniform``), one per stratum [r/m, (r+1)/m) (``stratified``), or
    antithetic pairs (u, 1 - u) with u stratified over m/2 strata (``antithetic``)."""
    if how == "uniform":
        return torch.rand((b, draws), generator=generator, dtype=torch.float64, device=device)
    m = draws // 2 if how == "antithetic" else draws
    u = (torch.arange(m, dtype=torch.float64, device=device) + torch.rand((b, m), generator=generator,
                                                                           dtype=torch.float64, device=device)) / m
    return torch.cat([u, 1 - u], 1) if how == "antithetic" else u


def elbo_continuous(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None, *,
                    t_min: Annotated[float, Interval(gt=0, lt=1)] | None = None,
                    draws: Annotated[int, Interval(ge=1)] = 8,
                    t_sampling: Literal["stratified", "antithetic", "uniform"] = "stratified",
                    t_density: Literal["log", "uniform"] = "log",
                    variance: VarianceChoice = "large") -> BatchNll:
    """The continuous-time ELBO (module docstring) for a batch ``x0 (B, *shape)``.

    Args:
        t_min: where the integral starts and the decoder sits (default: the time type's smallest time).
        draws: times per example (model calls per example: draws + 1).
        t_sampling: how u in [0, 1) is drawn per example: ``stratified`` (default), ``antithetic`` (pairs u, 1 - u;
            draws even) or ``uniform`` (independent).
        t_density: ``log`` (t = t_min^(1 - u), weight t log(1/t_min); default) or ``uniform`` (t uniform in
            [t_min, 1], weight 1 - t_min).
        variance: q_theta's variance for the decoder at t_min: ``large``/``small`` (both s(t_min)^2), ``model`` or
            a variance source.
    """
    c = ctx.corruption
    x0 = x0.to(torch.float64)
    b = x0.shape[0]
    c0 = c.to_basis(x0)
    u = draw_times(b, draws, t_sampling, generator, x0.device)
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    for r in range(u.shape[1]):
        if t_density == "log":
            t = t_min ** (1 - u[:, r])
            weight = t * -math.log(t_min) / u.shape[1]
        else:
            t = t_min + (1 - t_min) * u[:, r]
            weight = torch.full_like(t, (1 - t_min) / u.shape[1])
        m = c.marginal(t, x0)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        mean = ctx.mean(c.apply(m, x0, eps), m.t, generator)
        # -d SNR/dt = -2 a (a' s - a s') / s^3 per coefficient
        dsnr = 2 * m.a64 * (m.da64 * m.s64 - m.a64 * m.ds64) / m.s64 ** 3
        err = (c0 - c.to_basis(mean)) ** 2
        diffusion += flat_sum(0.5 * (-dsnr) * err) * weight
    tm = torch.full((b,), t_min, dtype=torch.float64, device=x0.device)
    m = c.marginal(tm, x0, derivatives=False)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = c.apply(m, x0, eps)
    pred = ctx.predict(x_t, m.t, generator)
    mean = (pred.mean if pred.mean is not None else pred.x0_hat).to(torch.float64)
    m0 = c.marginal(torch.zeros_like(tm), x0, derivatives=False)
    _, k0, std = c.posterior_coefficients(m, m0)
    var = step_variance(variance, m, m0, k0, std, q_variance(variance, m.t, x_t, pred))
    recon = decoder_nll(c, x0, mean, var, ctx.quantisation)
    prior = prior_kl(c, x0, 1.0, generator)
    dims = torch.full((b,), float(x0[0].numel()), dtype=torch.float64)
    return BatchNll(prior, diffusion, recon, dims)
