"""Exact oracles: a Gaussian-mixture data law with its closed-form posterior mean, and x0_hat = x_0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class FixedDenoiser:
    """The oracle x0_hat = x_0: always returns the clean batch it was built with (shape of x_t's batch)."""

    def __init__(self, x0: Any) -> None:
        self.x0 = x0

    def __call__(self, x_t: Any, t: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return self.x0


@dataclass
class GaussianMixture:
    """p(x_0) = sum_k w_k N(mu_k, diag(s_k^2)).

    Args:
        means: ``(K, D)``; stds: ``(K, D)`` or ``(K,)`` (isotropic); weights: ``(K,)`` summing to 1.

    For x_t = alpha x_0 + sigma eps the posterior is again a mixture; :meth:`denoiser` returns the exact
    E[x_0 | x_t] (float64 inside):

        w_k(x_t) ∝ w_k N(x_t; alpha mu_k, alpha^2 s_k^2 + sigma^2)
        E[x_0 | x_t, k] = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)
    """

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        stds = torch.as_tensor(self.stds, dtype=torch.float64)
        self.stds = stds[:, None].expand_as(self.means).clone() if stds.ndim == 1 else stds
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2) -> "GaussianMixture":
        """k equal-weight isotropic components on a circle in 2-D."""
        ang = torch.arange(k, dtype=torch.float64) * (2 * torch.pi / k)
        means = radius * torch.stack([ang.cos(), ang.sin()], 1)
        return cls(means, torch.full((k,), std), torch.full((k,), 1.0 / k))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """n draws ``(n, D)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * z).to(dtype)

    def posterior_mean(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] for per-sample amplitudes ``alpha, sigma`` ``(batch,)``; x_t ``(batch, D)``."""
        x = x_t.to(torch.float64)[:, None, :]  # (B, 1, D)
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        v = self.stds[None] ** 2  # (1, K, D)
        var = a * a * v + s2
        resid = x - a * self.means[None]
        logp = torch.log(self.weights)[None] - 0.5 * (var.log() + resid**2 / var).sum(-1)
        w = logp.softmax(dim=1)[..., None]  # (B, K, 1)
        cond = self.means[None] + a * v / var * resid
        return (w * cond).sum(1).to(x_t.dtype)

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

    def posterior_sampler(self, corruption: Any) -> "MixturePosterior":
        """An exact q(x_0 | x_t) for a corruption with ``schedule``: ``predict`` returns x0_hat drawn from the
        posterior and its mean E[x_0 | x_t] (what a last step returns)."""
        return MixturePosterior(self, corruption)

    def denoiser(self, corruption: Any):
        """An exact denoiser ``(x_t, t, generator) -> E[x_0 | x_t]`` for a corruption with ``schedule``."""

        def denoise(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            sch = corruption.schedule(t)
            return self.posterior_mean(x_t, sch.alpha, sch.sigma)

        return denoise


class MixturePosterior:
    """The exact posterior of a :class:`GaussianMixture` as a denoiser with ``predict``: x0_hat ~ p(x_0 | x_t)
    (the draw the invariance of same-time correctors needs), ``mean`` = E[x_0 | x_t]."""

    def __init__(self, mixture: GaussianMixture, corruption: Any) -> None:
        self.mixture, self.corruption = mixture, corruption

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
        from ..denoiser import Prediction

        sch = self.corruption.schedule(t)
        mean = self.mixture.posterior_mean(x_t, sch.alpha, sch.sigma)
        return Prediction(self.mixture.posterior_sample(x_t, sch.alpha, sch.sigma, generator), mean, mean)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.predict(x_t, t, generator).x0_hat
