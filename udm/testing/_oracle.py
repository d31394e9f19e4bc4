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
    E[x_0 | x_t] (float64 inside) and :meth:`posterior_variance` the diagonal of Cov[x_0 | x_t]:

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

    def _posterior(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """Responsibilities ``(B, K, 1)`` and each component's posterior mean and variance ``(B, K, D)``."""
        x = x_t.to(torch.float64)[:, None, :]  # (B, 1, D)
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1) ** 2
        v = self.stds[None] ** 2  # (1, K, D)
        var = a * a * v + s2
        resid = x - a * self.means[None]
        logp = torch.log(self.weights)[None] - 0.5 * (var.log() + resid**2 / var).sum(-1)
        return logp.softmax(dim=1)[..., None], self.means[None] + a * v / var * resid, v * s2 / var

    def posterior_mean(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] for per-sample amplitudes ``alpha, sigma`` ``(batch,)``; x_t ``(batch, D)``."""
        w, cond, _ = self._posterior(x_t, alpha, sigma)
        return (w * cond).sum(1).to(x_t.dtype)

    def posterior_variance(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The diagonal of Cov[x_0 | x_t] ``(batch, D)`` float64: sum_k w_k (var_k + mean_k^2) - mean^2."""
        w, cond, cvar = self._posterior(x_t, alpha, sigma)
        mean = (w * cond).sum(1)
        return ((w * (cvar + cond**2)).sum(1) - mean**2).clamp_min(0)

    def average_posterior_variance(self, alpha: float, sigma: float, n: int = 20000,
                                   generator: torch.Generator | None = None) -> float:
        """E_{x_t}[Var[x_0 | x_t]] averaged over dimensions (Monte Carlo over x_0 ~ p, eps ~ N(0, I); n draws): the
        optimal isotropic variance of a Gaussian q_theta at this noise level (Bao et al. 2022; docs/math.md,
        "q_theta with a variance"), e.g. for a :class:`udm.VarianceTable`."""
        x0 = self.sample(n, generator, dtype=torch.float64)
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        full = torch.full((n,), 1.0, dtype=torch.float64)
        return float(self.posterior_variance(x_t, alpha * full, sigma * full).mean())

    def denoiser(self, corruption: Any):
        """An exact denoiser ``(x_t, t, generator) -> E[x_0 | x_t]`` for a corruption with ``schedule``."""

        def denoise(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            sch = corruption.schedule(t)
            return self.posterior_mean(x_t, sch.alpha, sch.sigma)

        return denoise
