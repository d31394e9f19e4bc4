"""Exact oracles: a Gaussian-mixture data law with its closed-form posterior, and x0_hat = x_0.

For a linear-Gaussian corruption (B x_t)_k = a_k (B x_0)_k + s_k eps_k (docs/math.md, "Linear-Gaussian
corruptions") and a mixture whose components are diagonal in the basis B (isotropic components are
diagonal in every orthonormal basis), the posterior q(x_0 | x_t) is again a mixture, per coefficient:

    w_j(x_t) ∝ w_j prod_k N((B x_t)_k; a_k m_jk, a_k^2 v_j + s_k^2)                 (m_j = B mu_j)
    E[x_0 | x_t, j]_k   = m_jk + a_k v_j / (a_k^2 v_j + s_k^2) ((B x_t)_k - a_k m_jk)
    Var[x_0 | x_t, j]_k = v_j s_k^2 / (a_k^2 v_j + s_k^2)

so E[x_0 | x_t] and the diagonal of Cov[x_0 | x_t] in the basis are exact (docs/math.md, "Optimal
reverse variance"): the ground truth for Analytic-DPM-type variance estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Prediction, draw_gaussian


class FixedDenoiser:
    """The oracle x0_hat = x_0: always returns the clean batch it was built with (shape of x_t's batch)."""

    def __init__(self, x0: Any) -> None:
        self.x0 = x0

    def __call__(self, x_t: Any, t: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return self.x0


@dataclass
class MixturePosterior:
    """q(x_0 | x_t) of a :class:`GaussianMixture` summarised: ``mean`` ``(batch, *shape)`` in data space and
    ``variance`` ``(batch, *shape)``, the diagonal of Cov[x_0 | x_t] in the corruption's basis (float64; ``None``
    when the caller asked for the mean only)."""

    mean: torch.Tensor
    variance: torch.Tensor | None


@dataclass
class GaussianMixture:
    """p(x_0) = sum_j w_j N(mu_j, diag(s_j^2)).

    Args:
        means: ``(K, *shape)`` (e.g. ``(K, D)`` vectors or ``(K, C, H, W)`` images).
        stds: ``(K,)`` (isotropic components: exact under every linear-Gaussian corruption) or ``(K, *shape)``
            (diagonal in pixels: exact under corruptions with the identity basis).
        weights: ``(K,)`` summing to 1.

    :meth:`posterior` gives the exact E[x_0 | x_t] and diag Cov[x_0 | x_t] (see the module docstring);
    :meth:`denoiser` the exact mean as a denoiser, :meth:`q_theta` a denoiser with a variance source;
    :meth:`log_prob` and :meth:`entropy` the exact density (for likelihood gaps).
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        stds = torch.as_tensor(self.stds, dtype=torch.float64)
        self.isotropic = stds.ndim == 1
        self.stds = stds.reshape(-1, *([1] * (self.means.ndim - 1))).expand_as(self.means).clone() \
            if self.isotropic else stds
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample shape of the data."""
        return tuple(self.means.shape[1:])

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2) -> "GaussianMixture":
        """k equal-weight isotropic components on a circle in 2-D."""
        ang = torch.arange(k, dtype=torch.float64) * (2 * torch.pi / k)
        means = radius * torch.stack([ang.cos(), ang.sin()], 1)
        return cls(means, torch.full((k,), std), torch.full((k,), 1.0 / k))

    @classmethod
    def random(cls, k: int, shape: tuple[int, ...] | int, *, spread: float = 1.0, std: float = 0.2,
               seed: int = 0) -> "GaussianMixture":
        """k isotropic components with means uniform in [-spread, spread]^shape, stds uniform in
        [std / 2, std], weights from a Dirichlet(2) draw (all from ``seed``)."""
        g = torch.Generator().manual_seed(seed)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        means = spread * (2 * torch.rand(k, *shape, generator=g, dtype=torch.float64) - 1)
        stds = std * (0.5 + 0.5 * torch.rand(k, generator=g, dtype=torch.float64))
        u = torch.rand(2, k, generator=g, dtype=torch.float64)
        w = -torch.log(u).sum(0)  # Gamma(2, 1) draws: normalised, a Dirichlet(2, ..., 2) draw
        return cls(means, stds, w / w.sum())

    # ------------------------------------------------------------------ data law
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, *,
               components: bool = False) -> Any:
        """n draws ``(n, *shape)`` (with ``components=True`` also the component index of each, ``(n,)``)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, *self.shape, generator=generator, dtype=torch.float64)
        x = (self.means[k] + self.stds[k] * z).to(dtype)
        return (x, k) if components else x

    def component_log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log w_j + log N(x_0; mu_j, diag s_j^2) ``(batch, K)``."""
        x = x0.to(torch.float64).flatten(1)[:, None, :]
        mu, var = self.means.flatten(1)[None], (self.stds.flatten(1) ** 2)[None]
        lp = -0.5 * (((x - mu) ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        return lp + torch.log(self.weights)[None]

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x_0) ``(batch,)`` nats, exact."""
        return self.component_log_prob(x0).logsumexp(1)

    def entropy(self, n: int, generator: torch.Generator | None = None) -> tuple[float, float]:
        """(H, standard error) in nats: the differential entropy -E log p(x_0) by Monte Carlo over n draws."""
        lp = self.log_prob(self.sample(n, generator, torch.float64))
        return float(-lp.mean()), float(lp.std() / math.sqrt(n))

    # --------------------------------------------------------------- posteriors
    def posterior_mean(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] for x_t = alpha x_0 + sigma eps with per-sample amplitudes ``alpha, sigma`` ``(batch,)``."""
        a = alpha.to(torch.float64).reshape(-1, *([1] * len(self.shape)))
        s = sigma.to(torch.float64).reshape(-1, *([1] * len(self.shape)))
        return self._posterior(x_t.to(torch.float64), a, s, None, variance=False).mean.to(x_t.dtype)

    def posterior(self, x_t: torch.Tensor, corruption: Any, t: torch.Tensor | None = None, *,
                  marginal: Any = None, variance: bool = True) -> MixturePosterior:
        """The exact E[x_0 | x_t] and diag Cov[x_0 | x_t] (in the basis) under a linear-Gaussian ``corruption``
        at times ``t`` ``(batch,)`` (or its coefficients ``marginal``); ``variance=False`` skips the covariance
        (``variance`` is then ``None``)."""
        m = marginal if marginal is not None else corruption.marginal(t, x_t, derivatives=False)
        identity = getattr(getattr(corruption, "basis", None), "identity", True)
        if not (self.isotropic or identity):
            raise ValueError("GaussianMixture.posterior: components must be isotropic (stds of shape (K,)) for a "
                             f"corruption with a non-identity basis; got stds of shape {tuple(self.stds.shape)}.")
        out = self._posterior(x_t.to(torch.float64), m.a64.to(x_t.device), m.s64.to(x_t.device), corruption,
                              variance)
        return MixturePosterior(out.mean.to(x_t.dtype), out.variance)

    def _posterior(self, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor, corruption: Any,
                   variance: bool = True) -> MixturePosterior:
        basis = (lambda v: v) if corruption is None else corruption.to_basis  # noqa: E731
        c = basis(x_t).flatten(1)  # (B, D) coefficients of x_t
        means = basis(self.means.to(x_t.device)).flatten(1)[None]  # (1, K, D)
        v = (self.stds.to(x_t.device) ** 2).flatten(1)[None]  # (1, K, D)
        logw = torch.log(self.weights.to(x_t.device))[None]
        n, k, d = c.shape[0], means.shape[1], means.shape[2]
        a = a.expand(a.shape[0], *self.shape).reshape(a.shape[0], 1, -1).expand(n, 1, d)
        s2 = (s * s).expand(s.shape[0], *self.shape).reshape(s.shape[0], 1, -1).expand(n, 1, d)
        mean, second = torch.empty_like(c), (torch.empty_like(c) if variance else None)
        rows = max(1, (1 << 21) // (k * d))  # chunks of ~2M (B, K, D) entries: the temporaries stay in cache
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            ac, s2c = a[lo:hi], s2[lo:hi]
            var = ac * ac * v + s2c
            resid = c[lo:hi, None] - ac * means
            w = (logw - 0.5 * (var.log() + resid ** 2 / var).sum(-1)).softmax(dim=1)[..., None]  # (b, K, 1)
            cond_mean = means + ac * v / var * resid
            mean[lo:hi] = (w * cond_mean).sum(1)
            if second is not None:
                second[lo:hi] = (w * (v * s2c / var + cond_mean ** 2)).sum(1)
        var_out = (second - mean ** 2).clamp_min(0).reshape(n, *self.shape) if second is not None else None
        mean = mean.reshape(n, *self.shape)
        back = mean if corruption is None else corruption.from_basis(mean)
        return MixturePosterior(back, var_out)

    def posterior_sample(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw of x_0 ~ p(x_0 | x_t) ``(batch, D)`` (exact: a component k with probability w_k(x_t), then
        N(E[x_0 | x_t, k], diag(s_k^2 sigma^2 / (alpha^2 s_k^2 + sigma^2))))."""
        x = x_t.to(torch.float64)[:, None, :]
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        v = self.stds[None] ** 2
        var = a * a * v + s2
        resid = x - a * self.means[None]
        logp = torch.log(self.weights)[None] - 0.5 * (var.log() + resid**2 / var).sum(-1)
        k = torch.multinomial(logp.softmax(dim=1), 1, generator=generator)[:, 0]  # (B,)
        rows = torch.arange(len(k))
        mean = (self.means[None] + a * v / var * resid)[rows, k]
        std = (v * s2 / var).expand(len(k), -1, -1)[rows, k].sqrt()
        z = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        return (mean + std * z).to(x_t.dtype)

    def posterior_sampler(self, corruption: Any) -> "MixturePosteriorSampler":
        """An exact q(x_0 | x_t) for a corruption with ``schedule``: ``predict`` returns x0_hat drawn from the
        posterior and its mean E[x_0 | x_t] (what a last step returns)."""
        return MixturePosteriorSampler(self, corruption)

    def denoiser(self, corruption: Any):
        """An exact denoiser ``(x_t, t, generator) -> E[x_0 | x_t]`` for a linear-Gaussian ``corruption`` (or
        any corruption with an affine ``schedule(t)``)."""
        if callable(getattr(corruption, "marginal", None)) and callable(getattr(corruption, "to_basis", None)):
            def denoise(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
                return self.posterior(x_t, corruption, t, variance=False).mean
            return denoise

        def denoise_affine(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
            sch = corruption.schedule(t)
            return self.posterior_mean(x_t, sch.alpha, sch.sigma)

        return denoise_affine

    def q_theta(self, corruption: Any, variance: Any = None) -> "MixtureDenoiser":
        """A denoiser with the exact mean and q_theta's ``variance``: ``None`` (the mean), a variance source
        ``(t, x_t) -> Sigma`` (e.g. a :class:`udm.VarianceTable`), or ``"posterior"`` (the exact
        x_t-dependent diag Cov[x_0 | x_t])."""
        return MixtureDenoiser(self, corruption, variance)


class MixtureDenoiser:
    """``predict(x_t, t, generator, marginal=None) -> udm.Prediction`` with the mixture's exact posterior mean;
    x0_hat is drawn from N(mean, Sigma) in the corruption's basis when a variance is given (as
    :class:`udm.Denoiser` does for a network)."""

    accepts_marginal = True

    def __init__(self, mixture: GaussianMixture, corruption: Any, variance: Any = None) -> None:
        self.mixture, self.corruption, self.variance = mixture, corruption, variance

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None, *,
                marginal: Any = None) -> Prediction:
        post = self.mixture.posterior(x_t, self.corruption, t, marginal=marginal,
                                      variance=isinstance(self.variance, str) and self.variance == "posterior")
        if self.variance is None:
            return Prediction(post.mean, post.mean, post.mean)
        var = post.variance.to(x_t.dtype) if self.variance == "posterior" else self.variance(t, x_t)
        return Prediction(draw_gaussian(post.mean, var, self.corruption, generator), post.mean, post.mean, var)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.predict(x_t, t, generator).x0_hat


class MixturePosteriorSampler:
    """The exact posterior of a :class:`GaussianMixture` as a denoiser with ``predict``: x0_hat ~ p(x_0 | x_t)
    (the draw the invariance of same-time correctors needs), ``mean`` = E[x_0 | x_t]."""

    def __init__(self, mixture: GaussianMixture, corruption: Any) -> None:
        self.mixture, self.corruption = mixture, corruption

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
        sch = self.corruption.schedule(t)
        mean = self.mixture.posterior_mean(x_t, sch.alpha, sch.sigma)
        return Prediction(self.mixture.posterior_sample(x_t, sch.alpha, sch.sigma, generator), mean, mean)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.predict(x_t, t, generator).x0_hat
