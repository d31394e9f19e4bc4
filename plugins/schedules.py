"""The built-in noise schedules ``linear``, ``cosine``, ``vp``, ``ve``, ``flow`` (``table`` lives in
:mod:`udm.plugins.table_schedule`).

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

import math
from abc import abstractmethod
from collections.abc import Callable

import torch

import udm
from udm.errors import ConfigError

__all__ = ["LinearSchedule", "CosineSchedule", "VPSchedule", "VESchedule", "FlowSchedule"]

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


@udm.hookimpl
def udm_register_schedules(register):
    for schedule in (LinearSchedule, CosineSchedule, VPSchedule, VESchedule, FlowSchedule):
        register(schedule)

