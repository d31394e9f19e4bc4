"""Planted bugs for the conformance kit: two small corruptions written the way a plugin author writes them
(an affine Gaussian one with a schedule and a closed-form posterior; an absorbing token one with a sampled
noise posterior, a refresh kernel and a closed-form posterior), each correct, and plausible one-method
mistakes of each. ``tests/test_conformance_planted.py`` runs the kit on all of them: every planted bug must
fail with a message that names the check and the statistic, and the correct ones must pass.

``BUGS`` maps a bug's name to (corruption factory, data kind, the checks that must report it).
"""

from __future__ import annotations

import math

import torch

import udm
from udm import AffineSchedule


# ---------------------------------------------------------------- the affine Gaussian corruption
def _amplitudes(kind: str, t: torch.Tensor):
    """(alpha, sigma, dalpha, dsigma) float64: ``vp`` alpha = cos(pi t / 2), sigma = sin(pi t / 2);
    ``flow`` alpha = 1 - t, sigma = t."""
    t = t.to(torch.float64)
    if kind == "vp":
        h = math.pi / 2
        return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)
    return 1 - t, t.clone(), -torch.ones_like(t), torch.ones_like(t)


def _b(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return udm.append_dims(c.to(x.dtype), x.ndim)


class Affine(udm.GaussianNoise, udm.Corruption):
    """x_t = alpha_t x_0 + sigma_t eps with the exact noise posterior and the closed-form posterior."""

    name = "toy_affine"

    def __init__(self, kind: str = "flow") -> None:
        self.kind = kind

    def schedule(self, t):
        return AffineSchedule(*_amplitudes(self.kind, t))

    def _as(self, t):
        a, s, _, _ = _amplitudes(self.kind, t)
        return a, s

    def forward(self, x0, eps, t):
        a, s = self._as(t)
        return _b(a, x0) * x0 + _b(s, x0) * eps

    def noise_posterior(self, x_t, x0, t, generator=None):
        a, s = self._as(t)
        return (x_t - _b(a, x0) * x0) / _b(s, x0)

    def _posterior_coefficients(self, t, s):
        """(k_x, k_0, var): mean k_x x_t + k_0 x_0 and variance of p(x_s | x_t, x_0) (Ho et al. eq. 7)."""
        a_t, s_t = self._as(t)
        a_s, s_s = self._as(s)
        a_ts = a_t / a_s
        v = s_t**2 - a_ts**2 * s_s**2
        return a_ts * s_s**2 / s_t**2, a_s * v / s_t**2, v * s_s**2 / s_t**2

    def posterior(self, x_t, x0, t, s, generator):
        k_x, k_0, var = self._posterior_coefficients(t, s)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return _b(k_x, x_t) * x_t + _b(k_0, x_t) * x0 + _b(var.sqrt(), x_t) * z

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.float32)


class EpsSignFlipped(Affine):
    def noise_posterior(self, x_t, x0, t, generator=None):
        a, s = self._as(t)
        return (_b(a, x0) * x0 - x_t) / _b(s, x0)


class SigmaSquaredInNoisePosterior(Affine):
    def noise_posterior(self, x_t, x0, t, generator=None):
        a, s = self._as(t)
        return (x_t - _b(a, x0) * x0) / _b(s * s, x0)


class FreshNoiseInNoisePosterior(Affine):
    def noise_posterior(self, x_t, x0, t, generator=None):
        return self.sample_noise(x0, generator)  # "the noise is N(0, I), so draw it"


class ClampNearZero(Affine):
    def noise_posterior(self, x_t, x0, t, generator=None):
        a, s = self._as(t)
        return (x_t - _b(a, x0) * x0) / _b(s.clamp_min(0.05), x0)  # "avoid dividing by ~0"


class PureNoiseNearOne(Affine):
    def noise_posterior(self, x_t, x0, t, generator=None):
        a, s = self._as(t)
        a = torch.where(t > 0.95, torch.zeros_like(a), a)  # "x_t is pure noise there"
        return (x_t - _b(a, x0) * x0) / _b(s, x0)


class PosteriorIgnoresXt(Affine):
    def posterior(self, x_t, x0, t, s, generator):
        a_s, s_s = self._as(s)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return _b(a_s, x0) * x0 + _b(s_s, x0) * z  # marginally right, ignores x_t


class VPFormulaUnderFlow(Affine):
    def _posterior_coefficients(self, t, s):
        a_t, s_t = self._as(t)
        a_s, s_s = self._as(s)
        a_ts = a_t / a_s
        v = 1 - a_ts**2  # sigma_{t|s}^2 = 1 - alpha_{t|s}^2 holds for VP schedules only
        return a_ts * s_s**2 / s_t**2, a_s * v / s_t**2, v * s_s**2 / s_t**2


class StridedPosterior(Affine):
    def _posterior_coefficients(self, t, s):
        a_t, s_t = self._as(t)
        a_s, s_s = self._as(s)
        a_ts = a_t / a_s
        v = s_t**2 - a_ts * s_s**2  # alpha_{t|s} not squared: right only as s -> t
        return a_ts * s_s**2 / s_t**2, a_s * v / s_t**2, v * s_s**2 / s_t**2


class PosteriorStdIsVariance(Affine):
    def posterior(self, x_t, x0, t, s, generator):
        k_x, k_0, var = self._posterior_coefficients(t, s)
        z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        return _b(k_x, x_t) * x_t + _b(k_0, x_t) * x0 + _b(var, x_t) * z  # var where the std belongs


class ScheduleDisagrees(Affine):
    def schedule(self, t):
        return AffineSchedule(*_amplitudes("vp", t))  # forward runs the flow path


class ScheduleDerivativeSign(Affine):
    def schedule(self, t):
        a, s, da, ds = _amplitudes(self.kind, t)
        return AffineSchedule(a, s, da, -ds)


class PriorUniform(Affine):
    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype or torch.float32)
        return (2 * u - 1) * math.sqrt(3)  # mean 0, variance 1: right moments, wrong law


class RefreshLinearMix(Affine):
    def refresh_noise(self, eps, amount, generator):
        z = torch.randn(eps.shape, generator=generator, dtype=eps.dtype, device=eps.device)
        return (1 - amount) * eps + amount * z  # should be sqrt(1 - a^2) eps + a z


class UniformNoiseGaussianRefresh(Affine):
    def sample_noise(self, x0, generator):
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (2 * u - 1) * math.sqrt(3)  # q is uniform, but the inherited kernel mixes in Gaussians


class NotIdentityAtZero(Affine):
    def _as(self, t):
        a, s = super()._as(t)
        return a, s + 0.01


class ForwardChangesDtype(Affine):
    def forward(self, x0, eps, t):
        a, s = self._as(t)
        return udm.append_dims(a, x0.ndim) * x0 + udm.append_dims(s, x0.ndim) * eps  # float64 out


class GlobalRandomNoise(Affine):
    def sample_noise(self, x0, generator):
        return torch.randn(x0.shape, dtype=x0.dtype, device=x0.device)  # generator ignored


# ---------------------------------------------------------------- the absorbing token corruption
class Absorb(udm.Corruption):
    """Tokens masked where u < t (mask id = vocab), u ~ U[0, 1]^L; exact sampled noise posterior, the
    redraw kernel, and the closed-form posterior (a masked token is still masked at s with prob. s / t)."""

    name = "toy_absorb"
    data_kind = "tokens"
    family = "categorical"
    vocab = 5

    def sample_noise(self, x0, generator):
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)

    def forward(self, x0, eps, t):
        return torch.where(eps < t.to(eps.device)[:, None], torch.full_like(x0, self.vocab), x0)

    def noise_posterior(self, x_t, x0, t, generator=None):
        tau = t.to(torch.float64)[:, None]
        r = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        return torch.where(x_t == self.vocab, r * tau, tau + (1 - tau) * r)

    def refresh_noise(self, eps, amount, generator):
        fresh = torch.rand(eps.shape, generator=generator, device=eps.device, dtype=torch.float64)
        coin = torch.rand(eps.shape, generator=generator, device=eps.device, dtype=torch.float64)
        return torch.where(coin < amount, fresh, eps)

    def _stay(self, t, s):
        return (s / t).to(torch.float64)[:, None]

    def posterior(self, x_t, x0, t, s, generator):
        coin = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        return torch.where((x_t == self.vocab) & (coin >= self._stay(t, s)), x0, x_t)

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.full(tuple(shape), self.vocab, dtype=torch.long, device=device)


class AbsorbFreshNoise(Absorb):
    def noise_posterior(self, x_t, x0, t, generator=None):
        return self.sample_noise(x0, generator)


class AbsorbVisibleNoiseLaw(Absorb):
    def noise_posterior(self, x_t, x0, t, generator=None):
        tau = t.to(torch.float64)[:, None]
        r = torch.rand(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        return torch.where(x_t == self.vocab, r * tau, tau + (1 - tau) * r * r)  # visible u not uniform


class AbsorbRefreshShrinks(Absorb):
    def refresh_noise(self, eps, amount, generator):
        fresh = torch.rand(eps.shape, generator=generator, device=eps.device, dtype=torch.float64)
        return (1 - amount) * eps + amount * fresh  # a mixture of uniforms is not uniform


class AbsorbRefreshIgnoresAmount(Absorb):
    def refresh_noise(self, eps, amount, generator):
        return torch.rand(eps.shape, generator=generator, device=eps.device, dtype=torch.float64)


class AbsorbUniformPrior(Absorb):
    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randint(0, self.vocab, tuple(shape), generator=generator, device=device)


class AbsorbPosteriorIgnoresXt(Absorb):
    def posterior(self, x_t, x0, t, s, generator):
        return self.forward(x0, self.sample_noise(x0, generator), s)


class AbsorbPosteriorInvertedRatio(Absorb):
    def _stay(self, t, s):
        return (1 - s / t).to(torch.float64)[:, None]


class AbsorbPosteriorLatePositions(Absorb):
    def posterior(self, x_t, x0, t, s, generator):
        out = super().posterior(x_t, x0, t, s, generator)
        out[:, 12:] = torch.where(out[:, 12:] == self.vocab, x0[:, 12:], out[:, 12:])  # reveals too early past 12
        return out


AFFINE_X0 = torch.tensor([[0.8, -1.5, 0.3, 2.0]])
TOKENS_X0 = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0]])

#: the correct corruptions (each must pass the kit)
CORRECT = {"affine-vp": (lambda: Affine("vp"), "affine"), "affine-flow": (lambda: Affine("flow"), "affine"),
           "absorb": (Absorb, "tokens")}

#: bug name -> (factory, data kind, checks of which at least one must fail)
BUGS = {
    "eps sign flipped in noise_posterior": (EpsSignFlipped, "affine", {"noise_posterior_explains_x_t"}),
    "sigma^2 for sigma in noise_posterior": (SigmaSquaredInNoisePosterior, "affine", {"noise_posterior_explains_x_t"}),
    "fresh noise in noise_posterior": (FreshNoiseInNoisePosterior, "affine", {"noise_posterior_explains_x_t"}),
    "sigma clamped near t = 0": (ClampNearZero, "affine", {"noise_posterior_explains_x_t"}),
    "alpha dropped near t = 1": (PureNoiseNearOne, "affine", {"noise_posterior_explains_x_t"}),
    "closed-form posterior ignores x_t": (PosteriorIgnoresXt, "affine", {"joint[posterior]"}),
    "VP-only posterior variance under flow": (VPFormulaUnderFlow, "affine", {"joint[posterior]"}),
    "wrong strided posterior": (StridedPosterior, "affine", {"joint[posterior]"}),
    "sigma^2 for sigma in the posterior's noise": (PosteriorStdIsVariance, "affine", {"joint[posterior]"}),
    "schedule disagrees with forward": (ScheduleDisagrees, "affine", {"schedule_matches_forward"}),
    "schedule derivative sign": (ScheduleDerivativeSign, "affine", {"schedule_matches_forward"}),
    "prior with the right moments, wrong law": (PriorUniform, "affine", {"prior"}),
    "refresh kernel mixes linearly": (RefreshLinearMix, "affine", {"refresh_noise_preserves_q", "marginal[refresh]"}),
    "Gaussian refresh of uniform noise": (UniformNoiseGaussianRefresh, "affine", {"refresh_noise_preserves_q"}),
    "F_0 is not the identity": (NotIdentityAtZero, "affine", {"t0_identity"}),
    "forward changes the dtype": (ForwardChangesDtype, "affine", {"shapes"}),
    "noise drawn from the global RNG": (GlobalRandomNoise, "affine", {"determinism"}),
    "tokens: fresh noise in noise_posterior": (AbsorbFreshNoise, "tokens", {"noise_posterior_explains_x_t"}),
    "tokens: noise posterior with the wrong law": (AbsorbVisibleNoiseLaw, "tokens", {"noise_posterior_law"}),
    "tokens: refresh kernel not q-invariant": (AbsorbRefreshShrinks, "tokens", {"refresh_noise_preserves_q"}),
    "tokens: refresh ignores its amount": (AbsorbRefreshIgnoresAmount, "tokens", {"refresh_noise_preserves_q"}),
    "tokens: uniform prior for an absorbing process": (AbsorbUniformPrior, "tokens", {"prior"}),
    "tokens: closed-form posterior ignores x_t": (AbsorbPosteriorIgnoresXt, "tokens", {"joint[posterior]"}),
    "tokens: posterior's ratio inverted": (AbsorbPosteriorInvertedRatio, "tokens", {"marginal[posterior]"}),
    "tokens: posterior wrong past position 12": (AbsorbPosteriorLatePositions, "tokens", {"marginal[posterior]"}),
}

X0 = {"affine": AFFINE_X0, "tokens": TOKENS_X0}
