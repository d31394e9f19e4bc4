"""The built-in noise schedules: ``linear``, ``cosine``, ``vp``, ``ve``, ``flow`` and ``table``.

Each is a :class:`udm.Schedule` holding only its own parameters: the amplitudes (alpha_t, sigma_t) of
x_t = alpha_t x_0 + sigma_t eps for t in [0, 1] (data at t = 0), their t-derivatives in closed form, the
log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) and its inverse. Everything is float64 and elementwise in
``t`` (any shape, expanded tensors included, any device). Amplitudes, not variances: the DDPM paper's
alpha_bar is alpha_t^2.

The variance-preserving schedules (``linear``, ``cosine``, ``vp``, ``table``) have alpha^2 + sigma^2 = 1.
Written through y = log alpha_bar(t) <= 0, every quantity is free of cancellation::

    alpha = exp(y / 2),   sigma = sqrt(-expm1(y)),   lambda = y - log(-expm1(y)),
    alpha' = alpha y' / 2,   sigma' = -alpha^2 y' / (2 sigma),   and lambda -> y is y = log sigmoid(lambda).

sigma behaves like sqrt(t) at t = 0 for all of them and for ``ve``, so d sigma/dt(0) = +inf there (the
true value; ``flow`` has 1). ``t_of_log_snr`` maps values outside [lambda(1), lambda(0)] to the nearer end.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

import udm
from udm.errors import ConfigError

__all__ = ["LinearSchedule", "CosineSchedule", "VPSchedule", "VESchedule", "FlowSchedule", "TableSchedule",
           "BetaSchedule"]

Tensor = torch.Tensor
_TINY = torch.finfo(torch.float64).tiny  # the smallest normal float64; below it digits are lost


def _f64(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) to full precision everywhere (torch's softplus switches to x above 20)."""
    return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))


def _log_sigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = log alpha_bar for a variance-preserving schedule at log-SNR x."""
    return -_softplus(-x)


def _vp_amplitudes(y: Tensor) -> tuple[Tensor, Tensor]:
    return torch.exp(0.5 * y), torch.sqrt(0.0 - torch.expm1(y))  # 0 - (-0.0) = +0.0: sigma_0 = +0, sigma'_0 = +inf


def _vp_derivatives(alpha: Tensor, sigma: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    return 0.5 * alpha * dy, -0.5 * alpha * alpha * dy / sigma


def _vp_log_snr(y: Tensor) -> Tensor:
    return y - torch.log(-torch.expm1(y))


def _solve_decreasing(fn: Callable[[Tensor], tuple[Tensor, Tensor]], target: Tensor, lo: Tensor, hi: Tensor,
                      x: Tensor, *, max_iter: int = 60) -> Tensor:
    """Solve fn(x) = target for x in [lo, hi] (a unit-sized range), fn decreasing; ``fn`` returns value and derivative.

    Newton steps from ``x`` inside a bracket that shrinks with every evaluation; a step that leaves the
    bracket is replaced by bisection, so it converges even from a poor start, and quadratically from a good
    one. Once every step is below 1e-9, two more reach rounding level (further steps only move in the noise).
    """
    polish = 2
    for _ in range(max_iter):
        f, df = fn(x)
        f = f - target
        right = f > 0  # the root lies right of x
        lo, hi = torch.where(right, x, lo), torch.where(right, hi, x)
        step = x - f / df
        ok = (step >= lo) & (step <= hi)  # False for NaN (df = 0)
        new = torch.where(ok, step, 0.5 * (lo + hi))
        if new.numel() == 0 or float((new - x).abs().max()) <= 1e-9:
            polish -= 1
        x = new
        if polish == 0:
            break
    return x


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class _Builtin(udm.Schedule):
    """Shared by the built-ins: a repr that shows the parameters."""

    _params: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{self.name}(" + ", ".join(f"{p}={getattr(self, p)!r}" for p in self._params) + ")"


class _VariancePreserving(_Builtin):
    """alpha^2 + sigma^2 = 1, given y(t) = log alpha_bar(t) and its t-derivative (see the module docstring)."""

    @abstractmethod
    def _y(self, t: Tensor) -> Tensor:
        """y = log alpha_bar(t), float64, shaped like ``t``."""

    @abstractmethod
    def _dy(self, t: Tensor) -> Tensor:
        """dy/dt."""

    @abstractmethod
    def _t_of_y(self, y: Tensor) -> Tensor:
        """The inverse of y(t), for y in [y(1), 0]."""

    def amplitudes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return _vp_amplitudes(self._y(_f64(t)))

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return _vp_derivatives(*_vp_amplitudes(self._y(t)), self._dy(t))

    def __call__(self, t: Tensor) -> udm.AffineSchedule:
        t = _f64(t)
        alpha, sigma = _vp_amplitudes(self._y(t))
        return udm.AffineSchedule(alpha, sigma, *_vp_derivatives(alpha, sigma, self._dy(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        return _vp_log_snr(self._y(_f64(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        y = _log_sigmoid(_f64(lam))
        y_end = float(self._y(torch.ones((), dtype=torch.float64)))
        t = self._t_of_y(y.clamp(y_end, 0.0)).clamp(0.0, 1.0)
        return torch.where(y <= y_end, torch.ones_like(t), t)


# ------------------------------------------------------------------------------------------ linear
#: B_2k / (2k (2k - 1)), k = 1..4: lgamma(x) = (x - 1/2) log x - x + log(2 pi)/2 + sum_k a_k / x^(2k-1) + O(x^-9)
_STIRLING = ((1 / 12, 1), (-1 / 360, 3), (1 / 1260, 5), (-1 / 1680, 7))
#: the smallest argument at which the series above is used: its error is then < 1/(1188 x^9) < 1e-16
_STIRLING_FROM = 30.0


class LinearSchedule(_VariancePreserving):
    """DDPM's table (Ho et al. 2020): beta_n = linspace(beta_start, beta_end, steps), n = 1..steps, and
    alpha_bar_n = prod_{i<=n} (1 - beta_i), at t = n / steps.

    Between the integers, the exact continuous extension: with d = (beta_end - beta_start)/(steps - 1) and
    c = (1 - beta_start + d)/d, 1 - beta_i = d (c - i), so alpha_bar(n) = d^n Gamma(c) / Gamma(c - n), equal to
    the product at every integer n and smooth in between, with d/dn log alpha_bar = log d + psi(c - n).
    lgamma(c) - lgamma(c - n) cancels badly (c ~ 5e4 for DDPM; it even turns positive near n = 0), so it is
    written through Stirling's series, rearranged so that nothing cancels and every term is relative to n;
    when c - steps < 30, the recurrence Gamma(x + 1) = x Gamma(x) first shifts the arguments by K (adding
    K terms log1p(-n/(c + j))). Parameters whose extension rises above alpha_bar = 1 just after t = 0
    (beta_start < ~d/2, e.g. 100 steps from 1e-4 to 0.02) are refused: use ``table`` for those. The inverse
    of the log-SNR has no closed form: safeguarded Newton steps from the first-order (quadratic) approximation.
    """

    name = "linear"
    _params = ("steps", "beta_start", "beta_end")

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        _check(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 2,
               f"schedule linear: steps must be an integer >= 2; got {steps!r}. DDPM uses steps=1000.")
        _check(0 < beta_start <= beta_end < 1,
               f"schedule linear: beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1; got "
               f"beta_start={beta_start!r}, beta_end={beta_end!r}. DDPM uses beta_start=1e-4, beta_end=0.02.")
        self.steps, self.beta_start, self.beta_end = steps, float(beta_start), float(beta_end)
        self._d = d = (self.beta_end - self.beta_start) / (steps - 1)
        if d > 0:
            c = (1 - self.beta_start + d) / d
            self._shift = [c + j for j in range(max(0, math.ceil(_STIRLING_FROM - (c - steps))))]
            self._big_c = c + len(self._shift)  # C: Stirling's series holds for C - n >= 30, n <= steps
            x_min = self._big_c - steps  # terms below 1e-17 there are left out (DDPM: all but 1/(12 x))
            self._terms = [(a, m) for a, m in _STIRLING if abs(a) * x_min**-m > 1e-17]
            self._log_dc = math.log1p(d * (1 + len(self._shift)) - self.beta_start)  # log(d C), exact
        # y is concave in n, so it decreases on [0, steps] iff y'(0) <= 0, i.e. iff the extension's first
        # "beta" ~ beta_start - d/2 is >= 0 (DDPM: 1e-4 - 1e-5)
        slope0 = float(self._dy_n(torch.zeros((), dtype=torch.float64)))
        _check(slope0 <= 0, f"schedule linear: beta_start must be >= about (beta_end - beta_start) / (2 (steps - 1)) "
                            f"so that alpha_bar decreases between the steps too; got beta_start={beta_start!r} with "
                            f"(beta_end - beta_start) / (steps - 1) = {self._d:.4g}. Raise beta_start or steps, or "
                            f"use schedule table (betas=...), which interpolates monotonically.")

    def _y_n(self, n: Tensor) -> Tensor:
        """log alpha_bar at continuous step n = n log d + lgamma(c) - lgamma(c - n)."""
        if self._d == 0:
            return n * math.log1p(-self.beta_start)
        big_c = self._big_c
        x = big_c - n
        log_ratio = -torch.log1p(-n / big_c)  # log(C / x) >= 0
        y = n * self._log_dc + (x - 0.5) * log_ratio - n
        for a, m in self._terms:  # a (C^-m - x^-m) = -a C^-m ((C/x)^m - 1)
            y = y - a * big_c**-m * torch.expm1(m * log_ratio)
        for cj in self._shift:
            y = y + torch.log1p(-n / cj)
        return y

    def _dy_n(self, n: Tensor) -> Tensor:
        """d/dn log alpha_bar = log d + psi(c - n), term by term from :meth:`_y_n`."""
        if self._d == 0:
            return torch.full_like(n, math.log1p(-self.beta_start))
        x = self._big_c - n
        dy = self._log_dc + torch.log1p(-n / self._big_c) - 0.5 / x
        for a, m in self._terms:
            dy = dy - a * m / x ** (m + 1)
        for cj in self._shift:
            dy = dy - 1 / (cj - n)
        return dy

    def _y(self, t: Tensor) -> Tensor:
        return self._y_n(t * self.steps)

    def _dy(self, t: Tensor) -> Tensor:
        return self._dy_n(t * self.steps) * self.steps

    def _t_of_y(self, y: Tensor) -> Tensor:
        # start: -y ~ sum_i beta_i = b n + d n^2 / 2 with b = beta_start - d / 2, solved without cancellation
        b, d = self.beta_start - self._d / 2, self._d
        n0 = -2 * y / (b + torch.sqrt(b * b - 2 * d * y))
        t0 = torch.where(y < 0, n0 / self.steps, torch.zeros_like(y)).clamp(0.0, 1.0)
        return _solve_decreasing(lambda t: (self._y(t), self._dy(t)), y, torch.zeros_like(y),
                                 torch.ones_like(y), t0)


# ------------------------------------------------------------------------------------------ cosine
class CosineSchedule(_Builtin):
    """Nichol & Dhariwal 2021 (eq. 17): alpha_bar(t) = f(t)/f(0), f(t) = cos^2(theta), theta = (t + s)/(1 + s) pi/2.

    Amplitudes: alpha = cos(theta)/cos(theta_0) = sin(u)/cos(theta_0) with u = (1 - t) pi/2/(1 + s), exactly 0
    at t = 1; sigma = sqrt(sin(theta - theta_0) sin(theta + theta_0))/cos(theta_0) (since cos^2 theta_0 -
    cos^2 theta = sin(theta - theta_0) sin(theta + theta_0)), so neither cancels. No clamping: d alpha/dt(1) =
    -(pi/2)/(1 + s)/cos(theta_0) (-1.5585 for s = 0.008), d sigma/dt(1) = 0; lambda(1) = -inf.
    Inverse log-SNR in closed form: alpha^2 = sigmoid(lambda) gives u = asin(cos(theta_0) sqrt(sigmoid(lambda)))
    (used for lambda < 0); sigma^2 = sigmoid(-lambda) = q / cos^2(theta_0) gives
    sin(theta - theta_0) = q / (sin(theta) cos(theta_0) + cos(theta) sin(theta_0)) with
    sin(theta) = sqrt(sin^2 theta_0 + q), cos(theta) = sqrt(cos^2 theta_0 - q) (used for lambda >= 0).
    """

    name = "cosine"
    _params = ("s",)

    def __init__(self, s: float = 0.008) -> None:
        _check(0 <= s < math.inf, f"schedule cosine: s must be a finite number >= 0; got {s!r}. "
                                  f"Nichol & Dhariwal use s=0.008; s=0 gives alpha = cos(pi t/2).")
        self.s = float(s)
        self._k = (math.pi / 2) / (1 + self.s)  # d theta / dt
        self._theta0 = self.s * self._k
        self._c0 = math.sin(self._k)  # = cos(theta_0), written so that alpha(0) = 1 exactly
        self._s0 = math.sin(self._theta0)

    def _parts(self, t: Tensor) -> tuple[Tensor, ...]:
        """u = pi/2 - theta, v = theta - theta_0, w = theta + theta_0; sin u, sin v, sin w."""
        u, v = (1 - t) * self._k, t * self._k
        w = v + 2 * self._theta0
        return u, v, w, torch.sin(u), torch.sin(v), torch.sin(w)

    def _eval(self, t: Tensor, derivatives: bool) -> tuple[Tensor, ...]:
        u, v, w, sin_u, a, b = self._parts(_f64(t))
        ab = a * b  # underflows for t < ~1e-154 when s = 0: then the product of the roots
        root = torch.where(ab > _TINY, torch.sqrt(ab), torch.sqrt(a) * torch.sqrt(b))
        if not derivatives:
            return sin_u / self._c0, root / self._c0
        # d/dt sqrt(a b) = k (cos(v) b + a cos(w)) / (2 sqrt(a b)); a = b = 0 only when s = 0
        ratio = torch.where(a == b, torch.ones_like(a), torch.sqrt(a / b))
        dsigma = self._k / (2 * self._c0) * (torch.cos(v) / ratio + torch.cos(w) * ratio)
        return sin_u / self._c0, root / self._c0, -self._k * torch.cos(u) / self._c0, dsigma

    def amplitudes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._eval(t, False)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._eval(t, True)[2:]

    def __call__(self, t: Tensor) -> udm.AffineSchedule:
        return udm.AffineSchedule(*self._eval(t, True))

    def log_snr(self, t: Tensor) -> Tensor:
        *_, sin_u, a, b = self._parts(_f64(t))
        return 2 * torch.log(sin_u) - torch.log(a) - torch.log(b)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        lam = _f64(lam)
        c0, s0 = self._c0, self._s0
        u = torch.asin((c0 * torch.exp(0.5 * _log_sigmoid(lam))).clamp(max=1.0))
        q = c0 * c0 * torch.exp(_log_sigmoid(-lam))
        denom = torch.sqrt(s0 * s0 + q) * c0 + torch.sqrt((c0 * c0 - q).clamp_min(0)) * s0  # 0 only if q = s = 0
        sin_v = torch.where(q > 0, q / denom, torch.zeros_like(q))
        t = torch.where(lam < 0, 1 - u / self._k, torch.asin(sin_v.clamp(max=1.0)) / self._k)
        return t.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- vp
class VPSchedule(_VariancePreserving):
    """Score-SDE variance preserving (Song et al. 2021): beta(t) = beta_min + t (beta_max - beta_min),
    log alpha_bar = -(beta_min t + (beta_max - beta_min) t^2 / 2). Inverse by the quadratic, written as
    t = -2y / (beta_min + sqrt(beta_min^2 - 2 (beta_max - beta_min) y)) so that nothing cancels."""

    name = "vp"
    _params = ("beta_min", "beta_max")

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        _check(0 <= beta_min <= beta_max < math.inf and beta_max > 0,
               f"schedule vp: beta_min and beta_max must satisfy 0 <= beta_min <= beta_max, beta_max > 0; got "
               f"beta_min={beta_min!r}, beta_max={beta_max!r}. Song et al. use beta_min=0.1, beta_max=20.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _y(self, t: Tensor) -> Tensor:
        return -(self.beta_min + 0.5 * (self.beta_max - self.beta_min) * t) * t

    def _dy(self, t: Tensor) -> Tensor:
        return -(self.beta_min + (self.beta_max - self.beta_min) * t)

    def _t_of_y(self, y: Tensor) -> Tensor:
        root = torch.sqrt(self.beta_min**2 - 2 * (self.beta_max - self.beta_min) * y)
        return torch.where(y < 0, -2 * y / (self.beta_min + root), torch.zeros_like(y))


# ---------------------------------------------------------------------------------------------- ve
class VESchedule(_Builtin):
    """Score-SDE variance exploding (Song et al. 2021), its perturbation kernel from t = 0:
    alpha = 1, sigma = sigma_min sqrt((sigma_max/sigma_min)^(2t) - 1) = sigma_min sqrt(expm1(2 r t)),
    r = log(sigma_max/sigma_min); sigma_0 = 0 and sigma_1 ~ sigma_max. lambda = -2 log sigma, inverted as
    t = softplus(-lambda - 2 log sigma_min) / (2 r)."""

    name = "ve"
    _params = ("sigma_min", "sigma_max")

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        _check(0 < sigma_min < sigma_max < math.inf,
               f"schedule ve: sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max; got "
               f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}. Song et al. use sigma_min=0.01, sigma_max=50.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._r = math.log(self.sigma_max / self.sigma_min)

    def amplitudes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return torch.ones_like(t), self.sigma_min * torch.sqrt(torch.expm1(2 * self._r * t))

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        e = torch.expm1(2 * self._r * t)
        return torch.zeros_like(t), self.sigma_min * self._r * (1 + e) / torch.sqrt(e)

    def log_snr(self, t: Tensor) -> Tensor:
        return -2 * math.log(self.sigma_min) - torch.log(torch.expm1(2 * self._r * _f64(t)))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        t = _softplus(-_f64(lam) - 2 * math.log(self.sigma_min)) / (2 * self._r)
        return t.clamp(0.0, 1.0)


# -------------------------------------------------------------------------------------------- flow
class FlowSchedule(_Builtin):
    """The linear interpolant of flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023):
    alpha = 1 - t, sigma = t; lambda = 2 log((1 - t)/t), so t = sigmoid(-lambda/2)."""

    name = "flow"

    def amplitudes(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return 1 - t, t.clone()

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = _f64(t)
        return torch.full_like(t, -1.0), torch.ones_like(t)

    def log_snr(self, t: Tensor) -> Tensor:
        t = _f64(t)
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * _f64(lam))


# ------------------------------------------------------------------------------------------- table
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
    for schedule in (LinearSchedule, CosineSchedule, VPSchedule, VESchedule, FlowSchedule, TableSchedule):
        register(schedule)

