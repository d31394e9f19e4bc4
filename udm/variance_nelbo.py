"""The negative ELBO of the discrete-time Gaussian chain a DDPM-type sampler defines (docs/math.md,
"The NELBO of the sampling chain").

On a grid 1 >= t_K > ... > t_1 > t_0 = 0 the ``posterior`` rule with q_theta = N(mean, Sigma_t) is the Markov
chain p(x_s | x_t) = N(k_x x_t + k_0 mean(x_t), std^2 + k_0^2 Sigma_t) per basis coefficient (k_x, k_0, std:
the closed-form posterior p(x_s | x_t, x_0) = N(k_x x_t + k_0 x_0, std^2)), ending with p(x_0 | x_{t_1}) =
N(mean(x_{t_1}), Sigma_{t_1}). Its NELBO (Ho et al. 2020, eq. 5; Bao et al. 2022, eq. 4) is

    E[ KL(q(x_{t_K} | x_0) || p(x_{t_K}))  +  sum_{i=2..K} KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p(x_{t_{i-1}} | x_{t_i}))
       - log p(x_0 | x_{t_1}) ],

each KL between Gaussians in closed form (:func:`udm.linear_gaussian.gaussian_kl`), the expectation by Monte
Carlo over the data and one x_t draw per example and step. In nats per dimension; for a data law with a known
entropy H, NELBO - H >= 0 is the chain's excess over a perfect model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .linear_gaussian import gaussian_kl
from .time import check_grid

__all__ = ["ChainNelbo", "discrete_nelbo"]


@dataclass
class ChainNelbo:
    """:func:`discrete_nelbo`'s result; every figure in nats per dimension."""

    nats_per_dim: float  #: the NELBO
    stderr: float  #: its Monte-Carlo standard error
    prior: float  #: E KL(q(x_{t_K} | x_0) || prior)
    steps: list[float] = field(default_factory=list)  #: E KL of each step t_i -> t_{i-1}, from the top (K - 1 terms)
    decoder: float = 0.0  #: E[-log p(x_0 | x_{t_1})]
    times: torch.Tensor | None = None  #: the grid
    per_sample: torch.Tensor | None = None  #: ``(n,)`` each example's NELBO (nats, not per dimension)


def _variance(pred: Any, like: torch.Tensor) -> torch.Tensor:
    var = pred.variance if pred.variance is not None else 0.0
    return torch.as_tensor(var, dtype=torch.float64, device=like.device)


def discrete_nelbo(denoiser: Any, corruption: Any, times: Any, data: torch.Tensor, *,
                   generator: torch.Generator | None = None, batch_size: int = 1000,
                   decoder_variance: float | torch.Tensor | None = None) -> ChainNelbo:
    """The NELBO (nats/dim) of ``data`` under the DDPM-type chain on the grid ``times`` (see the module docstring).

    Args:
        denoiser: q_theta: an object with ``predict(x_t, t, generator, marginal=...) -> udm.Prediction`` giving
            ``mean`` and ``variance`` (Sigma in the corruption's basis; ``None`` = 0), e.g.
            ``udm.Denoiser(net, corruption, time_type, variance=fit.table)``.
        corruption: a linear-Gaussian corruption; the prior term uses :meth:`udm.LinearGaussian.prior_logp`'s law
            N(0, diag s(1)^2) in the basis.
        times: a decreasing grid ``(K + 1,)`` ending at 0.
        data: ``(n, *shape)`` examples (float64 keeps the KLs exact to the last digits).
        decoder_variance: Sigma of p(x_0 | x_{t_1}) (one number or per coefficient); default q_theta's own at
            t_1, which must then be > 0 (a point-mass source such as ``small`` has none: pass one, e.g. the
            shared value Bao et al. use for every row of a comparison).
    """
    if not callable(getattr(denoiser, "predict", None)):
        raise ConfigError(f"discrete_nelbo: denoiser must have predict() returning the mean and variance (e.g. "
                          f"udm.Denoiser(net, corruption, time_type, variance=...)); got {type(denoiser).__name__}.")
    grid = check_grid(times)
    if float(grid[-1]) != 0.0 or len(grid) < 2:
        raise ConfigError(f"discrete_nelbo: times must end at 0 (the decoder step); got {grid.tolist()}.")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    like = data[:1].to(torch.float64)
    table = corruption.grid_table(grid, like, derivatives=False)
    pairs = corruption.posterior_coefficients(table.rows(0, len(grid) - 2), table.rows(1, len(grid) - 1)) \
        if len(grid) > 2 else None
    top = corruption.marginal(torch.ones(1, dtype=torch.float64), like, derivatives=False)
    d = like[0].numel()
    totals, prior, decoder = [], 0.0, 0.0
    steps = [0.0] * (len(grid) - 2)
    for x0 in data.split(batch_size):
        c0 = corruption.to_basis(x0.to(torch.float64))
        m_top = corruption.marginal(grid[:1], like, derivatives=False)
        s1 = (top.s64 ** 2).to(c0.device)
        kl0 = gaussian_kl(m_top.a64.to(c0.device) * c0, (m_top.s64 ** 2).to(c0.device), torch.zeros_like(c0), s1)
        total = kl0.flatten(1).sum(1)
        prior += float(total.sum())
        for i in range(len(grid) - 1):
            x_t, pred, tt, m = _predict(denoiser, corruption, grid, i, x0, g)
            cmu = corruption.to_basis(pred.mean.to(torch.float64))
            var = _variance(pred, c0)
            if i < len(grid) - 2:
                k0, std = (v[i:i + 1].to(c0.device) for v in pairs[1:])
                vq = std * std
                term = gaussian_kl(torch.zeros_like(c0), vq, k0 * (c0 - cmu), vq + k0 * k0 * var).flatten(1).sum(1)
                steps[i] += float(term.sum())
            else:
                dv = var if decoder_variance is None else torch.as_tensor(decoder_variance, dtype=torch.float64,
                                                                        device=c0.device)
                dv = dv.expand_as(c0) if dv.ndim else dv.expand(c0.shape)
                if bool((dv <= 0).any()):
                    raise ConfigError("discrete_nelbo: the decoder variance Sigma_{t_1} must be > 0; got 0 (a point-"
                                      "mass q_theta such as 'small'). Pass decoder_variance=, e.g. the one shared by "
                                      "every variance choice being compared.")
                term = (0.5 * (torch.log(2 * math.pi * dv) + (c0 - cmu) ** 2 / dv)).flatten(1).sum(1)
                decoder += float(term.sum())
            total = total + term
        totals.append(total.cpu())
    per = torch.cat(totals)
    n = len(per)
    return ChainNelbo(float(per.mean()) / d, float(per.std() / math.sqrt(n)) / d if n > 1 else float("inf"),
                      prior / n / d, [s / n / d for s in steps], decoder / n / d, grid, per)


def _predict(denoiser, corruption, grid, i, x0, g):
    """x_t ~ q(x_t | x_0) at grid point i and q_theta's prediction there."""
    tt = torch.full((len(x0),), float(grid[i]), dtype=torch.float64, device=x0.device)
    m = corruption.marginal(tt[:1], x0, derivatives=False)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
    x_t = corruption.apply(m, x0, eps)
    if getattr(denoiser, "accepts_marginal", False):
        pred = denoiser.predict(x_t, tt, g, marginal=m)
    else:
        pred = denoiser.predict(x_t, tt, g)
    return x_t, pred, tt, m
