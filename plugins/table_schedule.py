"""The ``table`` schedule: a model trained elsewhere (e.g. with a diffusers scheduler) sampled on exactly its
own noise levels, from a list of betas, a list of alphas_cumprod, or a diffusers ``scheduler_config.json``.

Part of the built-in schedules (:mod:`udm.plugins.schedules` has the shared variance-preserving helpers);
its own module because reproducing diffusers' beta constructions and interpolating a table is a job of
its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

import udm
from udm.errors import ConfigError
from udm.plugins.schedules import (Tensor, _Builtin, _check, _f64, _log_sigmoid, _solve_decreasing,
                                   _vp_amplitudes, _vp_derivatives, _vp_log_snr)

__all__ = ["TableSchedule", "BetaSchedule"]


#: the diffusers beta schedules that ``table`` reproduces bit for bit
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


def _squaredcos_cap_v2(n: int, beta_start: float, beta_end: float) -> Tensor:
    # diffusers' betas_for_alpha_bar(n) (GLIDE's cosine, max_beta=0.999), operation for operation
    def alpha_bar_fn(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar_fn((i + 1) / n) / alpha_bar_fn(i / n), 0.999) for i in range(n)],
                        dtype=torch.float32)


_DIFFUSERS_BETAS: dict[str, Callable[[int, float, float], Tensor]] = {
    "linear": lambda n, start, end: torch.linspace(start, end, n, dtype=torch.float32),
    "scaled_linear": lambda n, start, end: torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2,
    "squaredcos_cap_v2": _squaredcos_cap_v2,
}


def _rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """diffusers' rescale_zero_terminal_snr (Lin et al. 2024, Algorithm 1), float32, operation for operation."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


#: the diffusers keys that build betas, with diffusers' defaults (DDPMScheduler, DDIMScheduler, ...)
_DIFFUSERS_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                       "rescale_betas_zero_snr": False}


def _read_scheduler_config(config: str | Mapping) -> tuple[dict, str]:
    """The parsed config and how to name it in errors; ``config`` is a mapping, a JSON file or a folder
    holding ``scheduler_config.json``."""
    if isinstance(config, Mapping):
        return dict(config), "config"
    path = Path(config)
    if path.is_dir():
        path = path / "scheduler_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"schedule table: config must be a readable diffusers scheduler_config.json (or a "
                          f"folder holding one); got {str(config)!r} ({type(exc).__name__}: {exc}). Write one "
                          f"with scheduler.save_config(folder), or pass betas or alphas_cumprod.") from None
    _check(isinstance(data, dict), f"schedule table: config {str(path)!r} must hold a JSON object; got "
                                   f"{type(data).__name__}. Pass a diffusers scheduler_config.json.")
    return data, f"config {str(path)!r}"


def _diffusers_alphas_cumprod(where: str, beta_schedule, trained_betas, num_train_timesteps: int,
                              beta_start: float, beta_end: float, rescale_betas_zero_snr: bool) -> Tensor:
    """alphas_cumprod exactly as diffusers' DDPMScheduler.__init__ computes it (float32 throughout)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    else:
        _check(beta_schedule in _DIFFUSERS_BETAS,
               f"schedule table: beta_schedule{where} must be one of "
               f"{', '.join(repr(k) for k in _DIFFUSERS_BETAS)}; got {beta_schedule!r}. For another schedule "
               f"pass its values: table(alphas_cumprod=scheduler.alphas_cumprod.tolist()).")
        betas = _DIFFUSERS_BETAS[beta_schedule](num_train_timesteps, beta_start, beta_end)
    _check_betas(betas.to(torch.float64))
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def _first_bad(values: Tensor, good: Callable[[Tensor], Tensor]) -> str | None:
    """None when ``values`` is a non-empty vector with ``good(values)`` everywhere, else what is wrong."""
    if values.ndim != 1 or values.numel() == 0:
        return f"shape {tuple(values.shape)}"
    bad = (~good(values)).nonzero()
    return f"{float(values[bad[0, 0]])!r} at index {int(bad[0, 0])}" if bad.numel() else None


def _valid_betas(b: Tensor) -> Tensor:
    ok = (b > 0) & (b < 1)
    ok[-1] = (b[-1] > 0) & (b[-1] <= 1)
    return ok


def _valid_alphas_cumprod(a: Tensor) -> Tensor:
    ok = a > 0
    ok[-1] = a[-1] >= 0
    return ok & (a < torch.cat([a.new_ones(1), a[:-1]]))


def _check_betas(betas: Tensor) -> None:
    bad = _first_bad(betas, _valid_betas)
    _check(bad is None, f"schedule table: betas must be a non-empty list of values in (0, 1) (the last may be 1: "
                        f"zero terminal SNR); got {bad}. beta_n = 1 - alpha_bar_n / alpha_bar_(n-1), n = 1..N.")


def _check_alphas_cumprod(abar: Tensor) -> None:
    bad = _first_bad(abar, _valid_alphas_cumprod)
    _check(bad is None, f"schedule table: alphas_cumprod must be a non-empty, strictly decreasing list of values "
                        f"in (0, 1) (the last may be 0: zero terminal SNR); got {bad}. Entry k is alpha_bar at "
                        f"step n = k + 1; alpha_bar = 1 at t = 0 is not listed.")


def _knot_slopes(delta: Tensor) -> Tensor:
    """Slope estimates at the M + 1 knots of a uniform grid from its M secants ``delta``: fourth-order finite
    differences (central inside, one-sided five-point ones at and next to the ends; fewer secants, lower
    orders), exact for quartics, so that the interpolant follows a smooth table to O(M^-4)."""
    d, m = delta, delta.numel()
    if m == 1:
        return d.repeat(2)
    if m == 2:
        return torch.stack([(3 * d[0] - d[1]) / 2, (d[0] + d[1]) / 2, (3 * d[1] - d[0]) / 2])
    if m == 3:
        return torch.stack([(11 * d[0] - 7 * d[1] + 2 * d[2]) / 6, (d[0] + d[1]) / 2, (d[1] + d[2]) / 2,
                            (11 * d[2] - 7 * d[1] + 2 * d[0]) / 6])
    out = torch.empty(m + 1, dtype=d.dtype)
    out[2:m - 1] = (7 * (d[1:-2] + d[2:-1]) - d[:-3] - d[3:]) / 12
    out[0] = (25 * d[0] - 23 * d[1] + 13 * d[2] - 3 * d[3]) / 12
    out[1] = (3 * d[0] + 13 * d[1] - 5 * d[2] + d[3]) / 12
    out[m - 1] = (3 * d[-1] + 13 * d[-2] - 5 * d[-3] + d[-4]) / 12
    out[m] = (25 * d[-1] - 23 * d[-2] + 13 * d[-3] - 3 * d[-4]) / 12
    return out


def _monotone(slopes: Tensor, delta: Tensor) -> Tensor:
    """Limit knot slopes so that the cubic Hermite interpolant of decreasing data strictly decreases: each slope
    between 1/2x and 2x the less steep adjacent secant. Fritsch & Carlson (1980) show that slope/secant ratios in
    [0, 3]^2 keep the cubic monotone; in [1/2, 2]^2 its slope stays >= 1/2 x the secant, so t(lambda) is well
    conditioned too. Smooth data (neighbouring secants within 2x) are left alone.
    ``delta`` holds the secants (< 0) on both sides of ``slopes[:len(delta) + 1]``."""
    gentle = torch.maximum(torch.cat([delta[:1], delta]), torch.cat([delta, delta[-1:]]))[:slopes.numel()]
    return torch.minimum(torch.maximum(slopes, 2 * gentle), gentle / 2)


def _hermite(y0: Tensor, y1: Tensor, d0: Tensor, d1: Tensor, s: Tensor, h: float) -> tuple[Tensor, Tensor]:
    """The cubic on one interval of width h with end values y0, y1 and t-slopes d0, d1, at local s in [0, 1]:
    its value and its t-derivative."""
    s2 = s * s
    value = (1 + 2 * s) * (1 - s) ** 2 * y0 + s * (1 - s) ** 2 * h * d0 + s2 * (3 - 2 * s) * y1 + s2 * (s - 1) * h * d1
    slope = 6 * s * (s - 1) * (y0 - y1) / h + (1 - s) * (1 - 3 * s) * d0 + s * (3 * s - 2) * d1
    return value, slope


class TableSchedule(_Builtin):
    """A variance-preserving schedule from a table of N noise levels: a model trained elsewhere is sampled on
    exactly its own alpha_bar values.

    Exactly one source: ``betas`` (cumulative product in float64), ``alphas_cumprod``, ``config`` (a diffusers
    ``scheduler_config.json``, a folder holding one, or the mapping ``scheduler.config``; read as JSON, diffusers
    itself is not needed) or ``beta_schedule`` with ``num_train_timesteps``, ``beta_start``, ``beta_end`` and
    ``rescale_betas_zero_snr`` (diffusers' names and defaults). The last two rebuild diffusers' ``betas`` and
    ``alphas_cumprod`` in float32 operation for operation, so they equal ``DDPMScheduler(...).alphas_cumprod``
    bit for bit: ``trained_betas``, ``beta_schedule`` in ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``
    (its betas clipped at 0.999) and the zero-terminal-SNR rescaling (alpha_bar_N = 0, as DDPMScheduler has it;
    Euler/DPM-Solver schedulers replace it by 2^-24 at sampling time only). A config's ``prediction_type`` and
    ``timestep_spacing`` are kept as attributes (None otherwise).

    Index convention: entry k (0-based) of the table is udm's step n = k + 1 at t = n / N, and alpha_bar(0) = 1.
    diffusers' timestep index k is therefore udm's n - 1; with discrete time of ``steps = N`` udm's grid
    visits exactly the table's noise levels.

    Between the points: a monotone C1 piecewise cubic (Hermite, Fritsch & Carlson 1980) through
    (n/N, log alpha_bar_n), n = 0..N: exact at the points, monotone, with a continuous derivative, so that
    second-order solvers keep their order. Its knot slopes are fourth-order finite differences
    (:func:`_knot_slopes`), so a smooth table is followed to O(N^-4), limited to a box inside Fritsch & Carlson's monotone region
    (:func:`_monotone`; the slope at t = 0 stays < 0, so that sigma ~ sqrt(t) as for every VP schedule). When alpha_bar_N = 0 the last interval interpolates alpha itself (alpha_(N-1) -> 0, slopes
    matched at t = (N-1)/N). The log-SNR is inverted on the bracketing interval with safeguarded Newton steps.
    """

    name = "table"

    def __init__(self, betas: Sequence[float] | None = None, alphas_cumprod: Sequence[float] | None = None,
                 config: str | dict | None = None, beta_schedule: BetaSchedule | None = None,
                 num_train_timesteps: int | None = None, beta_start: float | None = None,
                 beta_end: float | None = None, rescale_betas_zero_snr: bool | None = None) -> None:
        sources = {"betas": betas, "alphas_cumprod": alphas_cumprod, "config": config, "beta_schedule": beta_schedule}
        given = [k for k, v in sources.items() if v is not None]
        _check(len(given) == 1,
               f"schedule table: exactly one of betas, alphas_cumprod, config, beta_schedule must be given; got "
               f"{', '.join(given) or 'none'}. Pass a list of betas or alphas_cumprod, the path of a diffusers "
               f"scheduler_config.json, or a diffusers beta_schedule name.")
        diffusers_keys = {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start, "beta_end": beta_end,
                          "rescale_betas_zero_snr": rescale_betas_zero_snr}
        extra = {k: v for k, v in diffusers_keys.items() if v is not None}
        _check(beta_schedule is not None or not extra,
               f"schedule table: {', '.join(extra)} must be given only with beta_schedule; got "
               f"{', '.join(f'{k}={v!r}' for k, v in extra.items())} with {given[0]}. Remove them: "
               f"{'the config file sets them' if config is not None else 'the table itself sets the levels'}.")
        self.prediction_type: str | None = None
        self.timestep_spacing: str | None = None
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).clone()
            _check_betas(b)
            abar = torch.cumprod(1 - b, dim=0)
            self.source = "betas"
        elif alphas_cumprod is not None:
            abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).clone()
            self.source = "alphas_cumprod"
        else:
            if config is not None:
                cfg, where = _read_scheduler_config(config)
                _check(cfg.get("trained_betas") is not None or cfg.get("beta_schedule") is not None,
                       f"schedule table: {where} must define beta_schedule or trained_betas (a DDPM-family "
                       f"scheduler); got neither (class {cfg.get('_class_name', 'unknown')}). Use another udm "
                       f"schedule (flow matching: flow), or pass alphas_cumprod.")
                self.prediction_type = cfg.get("prediction_type")
                self.timestep_spacing = cfg.get("timestep_spacing")
                self.source, where = where, f" (in {where})"
            else:
                cfg, where, self.source = dict(beta_schedule=beta_schedule, **extra), "", f"diffusers {beta_schedule}"
            keys = {k: cfg.get(k, default) for k, default in _DIFFUSERS_DEFAULTS.items()}
            abar = _diffusers_alphas_cumprod(where, cfg.get("beta_schedule"), cfg.get("trained_betas"), **keys)
            abar = abar.to(torch.float64)
        _check_alphas_cumprod(abar)
        self.alphas_cumprod = abar  #: (N,) float64, entry k at t = (k + 1) / N
        self.steps = abar.numel()
        self._build(abar)
        self._device_cache: dict[torch.device, dict[str, Tensor]] = {}

    def __repr__(self) -> str:
        return f"table(steps={self.steps}, source={self.source!r})"

    # ------------------------------------------------------------------ construction
    def _build(self, abar: Tensor) -> None:
        """Per interval k = 0..N-1: end values y0, y1, t-slopes d0, d1, and whether the variable is alpha
        (the last interval of a zero-terminal-SNR table) rather than log alpha_bar."""
        n = abar.numel()
        zero_end = bool(abar[-1] == 0)
        logs = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(abar)])  # knots 0..N
        n_log = n - 1 if zero_end else n  # intervals interpolated in log alpha_bar
        delta = (logs[1:n_log + 1] - logs[:n_log]) * n
        m = _knot_slopes(delta) if n_log else torch.full((1,), -2.0 * n, dtype=torch.float64)
        if zero_end:  # the alpha interval's secant -alpha_(N-1) N, as a slope of log alpha_bar: -2N
            delta = torch.cat([delta, torch.tensor([-2.0 * n], dtype=torch.float64)])
        m = _monotone(m, delta)  # m[0] < 0: sigma ~ sqrt(t) at t = 0, as for every VP schedule
        y0, y1 = logs[:-1].clone(), logs[1:].clone()
        d0, d1 = m[:n].clone(), torch.cat([m[1:], m[-1:]])[:n].clone()
        is_alpha = torch.zeros(n, dtype=torch.bool)
        if zero_end:  # alpha: from alpha_(N-1) (slope matched to log alpha_bar's) to 0
            alpha = torch.cat([torch.exp(0.5 * logs[:-1]), torch.zeros(1, dtype=torch.float64)])
            alpha_delta = alpha.diff() * n
            end = _monotone(_knot_slopes(alpha_delta)[-1:], alpha_delta[-1:])
            y0[-1], y1[-1], d0[-1], d1[-1] = alpha[-2], 0.0, 0.5 * alpha[-2] * m[-1], end[0]
            is_alpha[-1] = True
        knot_lam = _vp_log_snr(logs)  # +inf at t = 0
        if zero_end:
            knot_lam[-1] = -math.inf
        self._zero_end = zero_end
        self._tables = {"y0": y0, "y1": y1, "d0": d0, "d1": d1, "is_alpha": is_alpha, "neg_lam": -knot_lam[1:]}

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        if device not in self._device_cache:
            self._device_cache[device] = {k: v.to(device) for k, v in self._tables.items()}
        return self._device_cache[device]

    # ------------------------------------------------------------------ evaluation
    def _locate(self, t: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The interval's coefficients gathered per element, and the local coordinate s in [0, 1]."""
        tab = self._on(t.device)
        pos = t * self.steps
        k = pos.floor().clamp(0, self.steps - 1).long()
        return {name: v[k] for name, v in tab.items() if name != "neg_lam"}, pos - k

    def _eval(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """alpha, sigma and their t-derivatives."""
        c, s = self._locate(_f64(t))
        y, dy = _hermite(c["y0"], c["y1"], c["d0"], c["d1"], s, 1.0 / self.steps)
        if not self._zero_end:
            alpha, sigma = _vp_amplitudes(y)
            return alpha, sigma, *_vp_derivatives(alpha, sigma, dy)
        log_y = torch.where(c["is_alpha"], torch.zeros_like(y), y)
        alpha, sigma = _vp_amplitudes(log_y)
        dalpha, dsigma = _vp_derivatives(alpha, sigma, dy)
        a_y = torch.where(c["is_alpha"], y, torch.zeros_like(y))  # the alpha-valued last interval
        a_sigma = torch.sqrt((1 - a_y) * (1 + a_y))
        return (torch.where(c["is_alpha"], a_y, alpha), torch.where(c["is_alpha"], a_sigma, sigma),
                torch.where(c["is_alpha"], dy, dalpha), torch.where(c["is_alpha"], -a_y * dy / a_sigma, dsigma))

    def amplitudes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._eval(t)[:2]

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._eval(t)[2:]

    def __call__(self, t: Tensor) -> udm.AffineSchedule:
        return udm.AffineSchedule(*self._eval(t))

    def log_snr(self, t: Tensor) -> Tensor:
        c, s = self._locate(_f64(t))
        y, _ = _hermite(c["y0"], c["y1"], c["d0"], c["d1"], s, 1.0 / self.steps)
        a = torch.where(c["is_alpha"], y, torch.zeros_like(y))
        return torch.where(c["is_alpha"], 2 * torch.log(a) - torch.log1p(-a * a), _vp_log_snr(y))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        lam = _f64(lam)
        tab = self._on(lam.device)
        k = torch.searchsorted(tab["neg_lam"], (-lam).contiguous()).clamp(max=self.steps - 1)
        c = {name: v[k] for name, v in tab.items() if name != "neg_lam"}
        log_abar = _log_sigmoid(lam)
        target = torch.where(c["is_alpha"], torch.exp(0.5 * log_abar), log_abar)
        target = torch.minimum(torch.maximum(target, c["y1"]), c["y0"])
        h = 1.0 / self.steps

        def value_and_slope(s: Tensor) -> tuple[Tensor, Tensor]:
            y, dy = _hermite(c["y0"], c["y1"], c["d0"], c["d1"], s, h)
            return y, dy * h

        start = ((c["y0"] - target) / (c["y0"] - c["y1"])).clamp(0.0, 1.0)
        s = _solve_decreasing(value_and_slope, target, torch.zeros_like(start), torch.ones_like(start), start)
        s = torch.where(target <= c["y1"], torch.ones_like(s), torch.where(target >= c["y0"], torch.zeros_like(s), s))
        return ((k + s) / self.steps).clamp(0.0, 1.0)




@udm.hookimpl
def udm_register_schedules(register):
    register(TableSchedule)
