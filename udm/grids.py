"""Sampling-grid spacings, one table for every time type (docs/math.md, "Time grids").

A spacing turns a budget of N model calls into N decreasing times t_0 > t_1 > ... > t_{N-1} > 0; the time type
snaps them to its lattice (``discrete``: t = n / T) and appends t_N = 0, where the last step returns x0_hat.
Each spacing is a function ``(GridRequest) -> (N,) float64`` in :data:`SPACINGS`, keyed by name, so a new
spacing (e.g. Analytic-DPM's optimal trajectory, which needs a fitted variance table: ``GridRequest.variance``)
is one entry::

    udm.grids.SPACINGS["mine"] = lambda req: ...

Spacings in t (a stride from t = 1; no call is spent at the smallest training time):

* ``uniform``: t_i = floor + (1 - floor)(N - i)/N;
* ``quadratic``: t_i = floor + (1 - floor)((N - i)/N)^2 (denser near the data);
* ``trailing``: t_i = (N - i)/N, exactly diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2024): a stride
  of 1/N that starts exactly at t = 1 and ignores ``floor``.

Spacings in the noise level (they need a corruption with a closed-form log-SNR, ``noise_schedule``) span the
same noise levels as ``uniform``, from lambda_start = max(lambda(1), :data:`LOG_SNR_MIN`) to the log-SNR of
``uniform``'s last time (both included), then t = 0; the times are the schedule's exact inverse
``t_of_log_snr``:

* ``logsnr``: uniform in the log-SNR lambda = log(alpha^2 / sigma^2) (DPM-Solver's "logSNR" grid);
* ``karras``: uniform in (sigma/alpha)^(1/rho), rho = 7 (Karras et al. 2022, eq. 5, in the VE-equivalent
  noise level sigma/alpha; diffusers' ``use_karras_sigmas``).

Where lambda(1) < :data:`LOG_SNR_MIN` (``cosine`` and ``flow``: -inf; ``linear``), these grids start below
t = 1; the sampler then starts from the prior at that time (a(t_0) x_0 neglected, see
:func:`udm.api.sample_start`), and the run records the first time and the prior (udm.sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CapabilityError

__all__ = ["GridRequest", "SPACINGS", "LOG_SNR_MIN", "KARRAS_RHO", "spacing_times"]

#: the lowest log-SNR a noise-level grid starts from: log(alpha^2/sigma^2) = -8, where sigma/alpha = e^4 ~ 55 (EDM
#: starts at 80) and alpha ~ 0.018, so the prior x_t0 ~ N(0, sigma_t0^2) neglects under 2% of x_0. Schedules whose
#: lambda(1) is lower (cosine and flow: -inf; linear DDPM: -10.1) start below t = 1. Measured against -10.2 (DPM-
#: Solver's clipping for cosine) with an exact denoiser on 2-D mixtures, -8 is better at 5-10 calls on every
#: schedule tried (docs/math.md, "Time grids").
LOG_SNR_MIN = -8.0
#: Karras et al.'s rho
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class GridRequest:
    """What a spacing function is given.

    Attributes:
        steps: N, the model calls (the grid has N + 1 points, the last t = 0).
        floor: the time the t-spacings approach as N grows (``continuous``: t_min; ``discrete``: 0).
        t_end: the smallest time a model call may use (``continuous``: t_min; ``discrete``: 1/T).
        corruption: the corruption being sampled (its ``noise_schedule`` for the noise-level spacings).
        variance: a fitted variance table, for spacings that need one (``None`` otherwise).
    """

    steps: int
    floor: float
    t_end: float
    corruption: Any = None
    variance: Any = None


def _fractions(req: GridRequest) -> torch.Tensor:
    """(N - i)/N for i = 0..N-1: the stride fractions, 1 first."""
    return torch.arange(req.steps, 0, -1, dtype=torch.float64) / req.steps


def _schedule(req: GridRequest, name: str):
    schedule = getattr(req.corruption, "noise_schedule", None)
    if schedule is None or not callable(getattr(schedule, "t_of_log_snr", None)):
        cname = getattr(req.corruption, "name", req.corruption)
        raise CapabilityError(
            f"grid spacing {name!r}: the corruption must have a noise schedule with a log-SNR and its inverse "
            f"(a noise_schedule, as gaussian has); got {cname!r}. Use spacing 'uniform', 'quadratic' or 'trailing'.")
    return schedule


def _noise_level_grid(req: GridRequest, name: str, to_u: Callable, from_u: Callable) -> torch.Tensor:
    """N times uniform in u = to_u(lambda) from the first to the last noise level of ``uniform`` (both included;
    the first no lower than :data:`LOG_SNR_MIN`)."""
    schedule = _schedule(req, name)
    last = float(_uniform(req)[-1]) if req.steps > 1 else 1.0
    ends = schedule.log_snr(torch.tensor([1.0, last], dtype=torch.float64))
    lam_start, lam_end = max(float(ends[0]), LOG_SNR_MIN), float(ends[1])
    u0, u1 = to_u(torch.tensor(lam_start, dtype=torch.float64)), to_u(torch.tensor(lam_end, dtype=torch.float64))
    lam = from_u(u0 + (u1 - u0) * torch.linspace(0, 1, req.steps, dtype=torch.float64)) if req.steps > 1 else \
        torch.tensor([lam_start], dtype=torch.float64)
    t = schedule.t_of_log_snr(lam)
    if lam_start == float(ends[0]):
        t[0] = 1.0
    if req.steps > 1:
        t[-1] = last
    return t


def _uniform(req: GridRequest) -> torch.Tensor:
    return req.floor + (1 - req.floor) * _fractions(req)


def _quadratic(req: GridRequest) -> torch.Tensor:
    return req.floor + (1 - req.floor) * _fractions(req) ** 2


def _trailing(req: GridRequest) -> torch.Tensor:
    return _fractions(req)


def _logsnr(req: GridRequest) -> torch.Tensor:
    return _noise_level_grid(req, "logsnr", lambda lam: lam, lambda u: u)


def _karras(req: GridRequest) -> torch.Tensor:
    # rho = sigma/alpha = exp(-lambda/2); uniform in rho^(1/7) = exp(-lambda/14)
    return _noise_level_grid(req, "karras", lambda lam: torch.exp(-lam / (2 * KARRAS_RHO)),
                             lambda u: -2 * KARRAS_RHO * torch.log(u))


#: spacing name -> function (see the module docstring)
SPACINGS: dict[str, Callable[[GridRequest], torch.Tensor]] = {
    "uniform": _uniform, "quadratic": _quadratic, "trailing": _trailing, "logsnr": _logsnr, "karras": _karras,
}


def spacing_times(name: str, req: GridRequest) -> torch.Tensor:
    """The N model-call times of spacing ``name`` (validated by the time type), float64, decreasing."""
    return SPACINGS[name](req)
