"""The ``gaussian`` corruption: x_t = alpha_t x_0 + sigma_t eps, eps ~ N(0, I).

Amplitudes, not variances (MATH.md §0.3): ``alpha_t`` is the DDPM paper's sqrt(alpha_bar_t) and
``sigma_t`` its sqrt(1 - alpha_bar_t). Coefficients are computed in float64 and cast to the data's
dtype at the end. Schedules (t in [0, 1], alpha_0 = 1, sigma_0 = 0):

``linear``  DDPM (Ho et al. 2020): beta_n = linspace(beta_start, beta_end, steps), alpha_bar_n =
            prod_{i<=n} (1 - beta_i). Extended to continuous n = t * steps by the exact closed form
            prod_{i=1}^{n} d (c - i) = d^n Gamma(c) / Gamma(c - n), d = (beta_end - beta_start)/(steps - 1),
            c = (1 - beta_start + d) / d: equal to the table at every integer n, smooth in between.
``cosine``  Nichol & Dhariwal 2021: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t + s)/(1 + s) pi/2).
``vp``      score-SDE VP with linear beta(t): alpha = exp(-beta_min t/2 - (beta_max - beta_min) t^2/4).
``ve``      score-SDE VE: alpha = 1, sigma^2 = sigma_min^2 ((sigma_max/sigma_min)^{2t} - 1) (the exact
            perturbation kernel from t = 0, so that F_0 is the identity; sigma(1) ~ sigma_max).
``flow``    the linear interpolant / rectified flow: alpha = 1 - t, sigma = t.

Prediction targets (``prediction``): ``x0``, ``eps`` or ``v`` = (alpha eps - sigma x0)/sqrt(alpha^2 +
sigma^2); conversions are exact (:mod:`udm.affine`). ``v`` (the default) is non-singular for every
schedule; ``eps`` divides by alpha_t, which vanishes at t = 1 for ``cosine`` and ``flow``.
"""

from __future__ import annotations

import math

import torch

import udm
from udm import affine
from udm.errors import ConfigError, did_you_mean


def _linear(t, *, steps, beta_start, beta_end, **_):
    n = t * steps
    if beta_end == beta_start:
        log_abar = n * math.log1p(-beta_start)
    else:
        d = (beta_end - beta_start) / (steps - 1)
        c = (1 - beta_start + d) / d
        if c - steps > 1e4:
            # lgamma(c) - lgamma(c - n) by Stirling's series, rearranged to avoid cancelling ~1e9-sized
            # terms (plain float64 lgamma would lose ~1e-7 here); the next term is O(n / c^3).
            log_abar = (n * math.log1p(d - beta_start) - n - (c - n - 0.5) * torch.log1p(-n / c)
                        + 1 / (12 * c) - 1 / (12 * (c - n)))
        else:
            log_abar = n * math.log(d) + math.lgamma(c) - torch.lgamma(c - n)
    return log_abar


def _cosine(t, *, s, **_):
    f = torch.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2
    return torch.log((f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp_min(1e-20))


def _vp(t, *, beta_min, beta_max, **_):
    return -(beta_min * t + 0.5 * (beta_max - beta_min) * t * t)


def _vp_amplitudes(log_abar):
    return torch.exp(0.5 * log_abar), torch.sqrt(-torch.expm1(log_abar))


def _ve_amplitudes(t, *, sigma_min, sigma_max, **_):
    ratio = math.log(sigma_max / sigma_min)
    return torch.ones_like(t), sigma_min * torch.sqrt(torch.expm1(2 * ratio * t))


def _flow_amplitudes(t, **_):
    return 1 - t, t


SCHEDULES = {
    "linear": lambda t, **k: _vp_amplitudes(_linear(t, **k)),
    "cosine": lambda t, **k: _vp_amplitudes(_cosine(t, **k)),
    "vp": lambda t, **k: _vp_amplitudes(_vp(t, **k)),
    "ve": _ve_amplitudes,
    "flow": _flow_amplitudes,
}


class GaussianCorruption(udm.GaussianNoise, udm.Corruption):
    """Affine Gaussian noise x_t = alpha_t x_0 + sigma_t eps (DDPM, DDIM, score SDEs, flow matching).

    Args:
        schedule: ``linear`` | ``cosine`` | ``vp`` | ``ve`` | ``flow`` (see the module docstring).
        prediction: what the network outputs: ``x0`` | ``eps`` | ``v``.
        weighting: x0-equivalent loss weight: ``none`` (plain MSE of the prediction) | ``x0`` | ``eps``
            (SNR) | ``v`` (SNR + 1) | ``min_snr`` (min(SNR, gamma)) | ``truncated_snr`` (max(SNR, 1)).
        gamma: the min-SNR gamma.
        steps, beta_start, beta_end: the ``linear`` table (DDPM: 1000, 1e-4, 0.02).
        cosine_s: the ``cosine`` offset s (0.008).
        beta_min, beta_max: the ``vp`` schedule (0.1, 20).
        sigma_min, sigma_max: the ``ve`` schedule (0.01, 50).
        data_range: ``[low, high]`` for optional clamping of x0_hat, e.g. ``[-1, 1]`` for images.
    """

    name = "gaussian"
    data_kind = "continuous"
    family = "gaussian"

    def __init__(self, schedule: str = "linear", prediction: str = "v", weighting: str = "none",
                 gamma: float = 5.0, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 cosine_s: float = 0.008, beta_min: float = 0.1, beta_max: float = 20.0,
                 sigma_min: float = 0.01, sigma_max: float = 50.0,
                 data_range: tuple[float, float] | list[float] | None = None) -> None:
        for key, value, allowed in (("schedule", schedule, SCHEDULES), ("prediction", prediction, affine.PREDICTIONS),
                                    ("weighting", weighting, affine.WEIGHTINGS)):
            if value not in allowed:
                raise ConfigError(f"corruption gaussian: {key} must be one of {', '.join(allowed)}; got {value!r}."
                                  f"{did_you_mean(str(value), allowed)}")
        if steps < 2 or not 0 < beta_start <= beta_end < 1:
            raise ConfigError(f"corruption gaussian: need steps >= 2 and 0 < beta_start <= beta_end < 1; "
                              f"got steps={steps}, beta_start={beta_start}, beta_end={beta_end}.")
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"corruption gaussian: need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}.")
        self.schedule_name, self.prediction, self.weighting, self.gamma = schedule, prediction, weighting, gamma
        self.family = "gaussian"
        self.data_range = tuple(data_range) if data_range is not None else None
        self._kw = dict(steps=steps, beta_start=beta_start, beta_end=beta_end, s=cosine_s,
                        beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max)
        self._fn = SCHEDULES[schedule]
        self._amplitudes = udm.TimeCache(self._compute_amplitudes)
        self._schedule = udm.TimeCache(self._compute_schedule)
        self._casts: dict[torch.dtype, udm.TimeCache] = {}  # dtype -> cached (alpha, sigma) cast to dtype

    def __repr__(self) -> str:
        return f"GaussianCorruption(schedule={self.schedule_name!r}, prediction={self.prediction!r})"

    # ------------------------------------------------------------ coefficients
    def _compute_amplitudes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fn(t.to(torch.float64), **self._kw)

    def schedule(self, t: torch.Tensor) -> affine.AffineSchedule:
        """alpha_t, sigma_t and their t-derivatives (float64, ``(batch,)``)."""
        return self._schedule(t)

    def _compute_schedule(self, t: torch.Tensor) -> affine.AffineSchedule:
        t = t.to(torch.float64)
        (a, s), (da, ds) = torch.func.jvp(lambda tt: self._fn(tt, **self._kw), (t,), (torch.ones_like(t),))
        return affine.AffineSchedule(a, s, da, ds)

    def _coef(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> affine.AffineSchedule:
        """alpha_t, sigma_t in float64, or cast to ``dtype`` once per time tensor (the same values that
        :mod:`udm.affine` would cast on every call; use it only where they enter a formula directly)."""
        if dtype is None or dtype == torch.float64:
            return affine.AffineSchedule(*self._amplitudes(t))
        if dtype not in self._casts:
            self._casts[dtype] = udm.TimeCache(lambda tt: tuple(v.to(dtype) for v in self._amplitudes(tt)))
        return affine.AffineSchedule(*self._casts[dtype](t))

    # --------------------------------------------------------------- contract
    def forward(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self._coef(t, x0.dtype)
        return udm.append_dims(c.alpha, x0.ndim) * x0 + udm.append_dims(c.sigma, x0.ndim) * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_1 ~ N(0, sigma_1^2 I) (alpha_1 x_0 is neglected; alpha_1 = 0.006 for DDPM linear)."""
        one = torch.ones(1, dtype=torch.float64)
        sigma1 = float(self._compute_amplitudes(one)[1])
        return sigma1 * torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.float32)

    def noise_posterior(self, x_t, x0, t, generator=None) -> torch.Tensor:
        """The exact inverse eps = (x_t - alpha_t x0) / sigma_t (a point mass)."""
        return affine.eps_from_x0(x_t, x0, self._coef(t, x_t.dtype))

    def posterior(self, x_t, x0, t, s, generator) -> torch.Tensor:
        """Closed-form p(x_s | x_t, x_0) for any s < t (Ho et al. eq. 7; Kingma et al. 2021, VDM eq. 24):

        with alpha_{t|s} = alpha_t/alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2,
        mean = alpha_{t|s} sigma_s^2/sigma_t^2 x_t + alpha_s sigma_{t|s}^2/sigma_t^2 x_0,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
        """
        ct, cs = self._coef(t), self._coef(s)
        a_ts = ct.alpha / cs.alpha
        var_ts = (ct.sigma**2 - a_ts**2 * cs.sigma**2).clamp_min(0)
        k_x = a_ts * cs.sigma**2 / ct.sigma**2
        k_0 = cs.alpha * var_ts / ct.sigma**2
        std = (var_ts * cs.sigma**2 / ct.sigma**2).sqrt()
        b = lambda c: udm.append_dims(c.to(x_t.dtype), x_t.ndim)  # noqa: E731
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return b(k_x) * x_t + b(k_0) * x0 + b(std) * z

    # ------------------------------------------------------ prediction target
    def target(self, x0, eps, t):
        return affine.target(self.prediction, x0, eps, self._coef(t))

    def to_x0(self, output, x_t, t):
        # x0_from_eps uses alpha, sigma directly (cast once per t); v's formula needs them in float64
        return affine.to_x0(self.prediction, output, x_t, self._coef(t, x_t.dtype if self.prediction == "eps" else None))

    def loss_weight(self, t):
        return affine.x0_loss_weight(self.weighting, self.prediction, self._coef(t), self.gamma)


@udm.hookimpl
def udm_register_corruptions(register):
    register(GaussianCorruption)
