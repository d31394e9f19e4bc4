"""What the core derives for an affine Gaussian corruption x_t = alpha_t x_0 + sigma_t eps.

Amplitudes, not variances: ``alpha`` is the DDPM paper's sqrt(alpha_bar_t) (Su's bar-alpha) and
``sigma`` its sqrt(1 - alpha_bar_t) (MATH.md §0.3). All functions take per-sample coefficients of
shape ``(batch,)`` (or ``(1,)``) and broadcast them over the data dims.

Conversions (MATH.md §3.7), with SNR_t = alpha_t^2 / sigma_t^2 and r_t = sqrt(alpha_t^2 + sigma_t^2):

* x0 = (x_t - sigma eps) / alpha,    eps = (x_t - alpha x0) / sigma
* v  = (alpha eps - sigma x0) / r    (Salimans & Ho 2022 for r = 1; defined for any affine path)
* x0 = (alpha x_t - sigma r v) / r^2,  eps = (sigma x_t + alpha r v) / r^2
* score = -eps / sigma
* SDE (MATH.md eq. 3.5): f = alpha'/alpha,  g^2 = 2 sigma sigma' - 2 sigma^2 alpha'/alpha
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._tensor import append_dims

__all__ = [
    "AffineSchedule",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "score_from_eps",
    "snr",
    "sde_coefficients",
    "ddpm_refresh_amount",
    "PREDICTIONS",
    "WEIGHTINGS",
    "to_x0",
    "target",
    "x0_loss_weight",
]


@dataclass(frozen=True)
class AffineSchedule:
    """alpha_t, sigma_t and their time derivatives, each of shape ``(batch,)``."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    dalpha: torch.Tensor | None = None
    dsigma: torch.Tensor | None = None


def _b(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return append_dims(c.to(x.dtype), x.ndim)


def x0_from_eps(x_t, eps, s: AffineSchedule):
    return (x_t - _b(s.sigma, x_t) * eps) / _b(s.alpha, x_t)


def eps_from_x0(x_t, x0, s: AffineSchedule):
    """F_t^{-1}(x_0, x_t): the exact noise posterior (a point mass) of the affine corruption."""
    return (x_t - _b(s.alpha, x_t) * x0) / _b(s.sigma, x_t)


def _r(s: AffineSchedule):
    return (s.alpha * s.alpha + s.sigma * s.sigma).sqrt()


def v_from_x0_eps(x0, eps, s: AffineSchedule):
    return (_b(s.alpha, x0) * eps - _b(s.sigma, x0) * x0) / _b(_r(s), x0)


def x0_from_v(x_t, v, s: AffineSchedule):
    r = _r(s)
    return (_b(s.alpha, x_t) * x_t - _b(s.sigma * r, x_t) * v) / _b(r * r, x_t)


def eps_from_v(x_t, v, s: AffineSchedule):
    r = _r(s)
    return (_b(s.sigma, x_t) * x_t + _b(s.alpha * r, x_t) * v) / _b(r * r, x_t)


def score_from_eps(eps, s: AffineSchedule):
    """grad_x log p_t(x) = -eps / sigma_t."""
    return -eps / _b(s.sigma, eps)


def snr(s: AffineSchedule) -> torch.Tensor:
    return (s.alpha / s.sigma) ** 2


def sde_coefficients(s: AffineSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Drift factor f_t and squared diffusion g_t^2 of the linear SDE dx = f x dt + g dw (eq. 3.5)."""
    if s.dalpha is None or s.dsigma is None:
        raise ValueError("sde_coefficients: the schedule must carry dalpha and dsigma; got None.")
    f = s.dalpha / s.alpha
    g2 = 2 * s.sigma * s.dsigma - 2 * s.sigma**2 * f
    return f, g2


def ddpm_refresh_amount(st: AffineSchedule, ss: AffineSchedule, eta: float) -> torch.Tensor:
    """The refresh amount a in eps' = sqrt(1-a^2) eps_hat + a z that makes the ``refresh`` rule DDIM-eta.

    a = eta * sqrt(1 - SNR_t / SNR_s) = sigma_DDIM / sigma_s (DDIM eq. 16 with eta; MATH.md §3.4:
    tilde-sigma = sigma_{t-1} beta_t / sigma_t / sigma_{t-1}). eta = 1 is the DDPM posterior for any
    affine schedule and any s < t.
    """
    ratio = (st.alpha * ss.sigma) ** 2 / (ss.alpha * st.sigma) ** 2
    return eta * (1 - ratio).clamp(0, 1).sqrt()


#: prediction targets a Gaussian network may output
PREDICTIONS = ("x0", "eps", "v")
#: loss weightings, expressed as the weight lambda(t) on the x0 squared error
WEIGHTINGS = ("none", "x0", "eps", "v", "min_snr", "truncated_snr")


def target(prediction: str, x0, eps, s: AffineSchedule):
    """The regression target for ``prediction`` in {x0, eps, v}."""
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps
    return v_from_x0_eps(x0, eps, s)


def to_x0(prediction: str, output, x_t, s: AffineSchedule):
    """x0_hat from a network output in the ``prediction`` space (exact conversion)."""
    if prediction == "x0":
        return output
    if prediction == "eps":
        return x0_from_eps(x_t, output, s)
    return x0_from_v(x_t, output, s)


def x0_loss_weight(weighting: str, prediction: str, s: AffineSchedule, gamma: float = 5.0) -> torch.Tensor | None:
    """Weight on the squared error *in the prediction space* that realises ``weighting``.

    An error d in x0 is an error SNR^{1/2} d in eps and (SNR + 1)^{1/2} d in v (for any affine path,
    with the r-normalised v above), so the natural x0-weights are 1, SNR and SNR + 1. ``weighting``
    names the desired x0-weight lambda(t): ``x0`` (1), ``eps`` (SNR), ``v`` (SNR + 1), ``min_snr``
    (min(SNR, gamma), Hang et al. 2023), ``truncated_snr`` (max(SNR, 1), Salimans & Ho 2022);
    ``none`` leaves the plain MSE of the prediction space. Returns ``None`` for no reweighting.
    """
    if weighting == "none":
        return None
    r = snr(s)
    natural = {"x0": torch.ones_like(r), "eps": r, "v": r + 1}[prediction]
    wanted = {
        "x0": lambda: torch.ones_like(r),
        "eps": lambda: r,
        "v": lambda: r + 1,
        "min_snr": lambda: r.clamp(max=gamma),
        "truncated_snr": lambda: r.clamp(min=1.0),
    }[weighting]()
    return wanted / natural
