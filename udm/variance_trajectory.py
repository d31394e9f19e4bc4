"""The optimal K-step trajectory of Analytic-DPM (Bao et al. 2022, section 4; docs/math.md, "The optimal
trajectory").

With q_theta's optimal variance and an exact mean, the KL term of the step t -> s of the DDPM-type chain is,
per basis coefficient (a_{t|s} = a_t / a_s, s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2):

    KL_{s,t} = 1/2 log(1 + gamma^2 Sigma_t / beta_tilde) = 1/2 log(1 + a_s^2 s_{t|s}^2 Sigma_t / (s_t^2 s_s^2))

so the NELBO of a trajectory is a sum of pair costs plus terms fixed by its two ends, and choosing the K
times with the least NELBO is a shortest path with exactly K - 1 edges over the candidate times: a dynamic
program, O(K M^2) for M candidates. For a VP schedule this is the paper's log(1 - beta_{t|s} Gamma_t /
(1 - alpha_bar_t)) up to terms that telescope. Any linear-Gaussian corruption: the cost sums over
coefficients.

The program searches every candidate, so it exploits estimates of Sigma_t that are low by chance: a long jump
from such a time looks cheap, and the chain then takes it with a variance far too small (on a 16-D mixture
with 1000 Monte-Carlo samples per time, a NELBO of 53 nats/dim instead of 0.3). The costs therefore use a
fitted table's ``upper`` values (the estimate + 3 standard errors, at most the bound), where it has them;
erring large costs little (DDPM's beta vs beta_tilde).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError

__all__ = ["step_costs", "optimal_trajectory", "optimal_grid"]


def step_costs(corruption: Any, times: torch.Tensor, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``C[i, j]`` float64 ``(M, M)``: the KL cost (nats, summed over coefficients) of the step from ``times[j]`` down
    to ``times[i]`` (i < j) with q_theta's variance ``sigma`` ``(M,)`` or ``(M, *shape)`` at each time; ``inf``
    where i >= j or the posterior does not exist (s_{t|s}^2 < 0). ``times``: increasing, all > 0."""
    table = corruption.grid_table(times, like[:1], derivatives=False)
    a, s = table.a64, table.s64
    a = a.expand(len(times), *like.shape[1:]).flatten(1) if a[0].numel() > 1 or sigma.ndim > 1 else a.reshape(-1, 1)
    s = s.expand(len(times), *like.shape[1:]).flatten(1) if s[0].numel() > 1 or sigma.ndim > 1 else s.reshape(-1, 1)
    sig = sigma.to(torch.float64).reshape(len(times), -1).expand(len(times), a.shape[1])
    d = like[0].numel() if a.shape[1] == 1 else 1  # a scalar cost stands for d equal coefficients
    n = len(times)
    cost = torch.full((n, n), float("inf"), dtype=torch.float64)
    for i in range(n - 1):  # from every later time t = times[j] to s = times[i]
        as_, ss = a[i], s[i]
        at, st, sg = a[i + 1:], s[i + 1:], sig[i + 1:]
        ratio = at / as_
        var_ts = st * st - ratio * ratio * ss * ss
        term = torch.log1p(as_ * as_ * var_ts.clamp_min(0) * sg / (st * st * ss * ss))
        row = 0.5 * d * term.sum(1)
        bad = (var_ts < -1e-12 * st * st).any(1) | torch.isnan(row)  # no posterior there (or no noise at all)
        cost[i, i + 1:] = torch.where(bad, torch.full_like(row, float("inf")), row)
    return cost


def optimal_trajectory(cost: torch.Tensor, points: int) -> list[int]:
    """The increasing indices ``i_1 = 0 < ... < i_points = M - 1`` minimising sum C[i_k, i_{k+1}] (exactly
    ``points - 1`` edges between the smallest and largest candidate), by dynamic programming."""
    m = cost.shape[0]
    if not 2 <= points <= m:
        raise ConfigError(f"optimal_trajectory: points must be in [2, {m}] (the candidate times); got {points}.")
    best = torch.full((m,), float("inf"), dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(points - 1):
        total = best[:, None] + cost  # total[i, j]: best path to i, then i -> j
        best, arg = total.min(0)
        back.append(arg)
    if not torch.isfinite(best[m - 1]):
        raise ConfigError(f"optimal_trajectory: a path of {points} points with finite cost must exist; got none. "
                          f"Fit the variance on more times.")
    path = [m - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


def optimal_grid(steps: int, table: Any, corruption: Any, like: torch.Tensor) -> torch.Tensor:
    """The sampling grid ``(steps + 1,)`` decreasing to 0 whose ``steps`` model calls minimise the NELBO:
    ``steps`` of the fitted ``table``'s times (its largest and smallest kept), then 0."""
    times, values = getattr(table, "times", None), getattr(table, "values", None)
    if times is None or values is None:
        raise ConfigError(f"spacing 'optimal': the variance must be a fitted table (udm.VarianceTable, e.g. "
                          f"udm.fit_variance(..., dense=M).table); got {type(table).__name__}. Fit a dense table: "
                          f"`udm fit-variance RUN --source analytic --dense M`.")
    upper = getattr(table, "upper", None)  # pessimistic costs: see the module docstring
    keep = times > 0
    times, values = times[keep], (upper if upper is not None else values)[keep]
    if not isinstance(steps, int) or not 1 <= steps <= len(times):
        raise ConfigError(f"spacing 'optimal': steps must be an integer in [1, {len(times)}] (the fitted table's "
                          f"times); got {steps!r}. Fit a denser table (--dense M with M >= steps).")
    if steps == 1:
        chosen = times[-1:]
    else:
        idx = optimal_trajectory(step_costs(corruption, times, values, like), steps)
        chosen = times[idx]
    return torch.cat([chosen.flip(0), torch.zeros(1, dtype=torch.float64)])
