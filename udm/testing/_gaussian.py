"""An exact oracle for likelihoods: Gaussian data N(mu, Sigma) under any linear-Gaussian corruption.

In the corruption's basis B, c_0 = B x_0 ~ N(m, S) with m = B mu, S = B Sigma B^T, and c_t = A c_0 + D e with
A = diag(a(t)), D = diag(s(t)). Everything is closed form (float64):

* log p(x_0) = log N(x_0; mu, Sigma) (B is orthonormal);
* E[c_0 | c_t] = m + S A (A S A + D^2)^{-1} (c_t - A m)  (the exact denoiser);
* Cov[c_0 | c_t] = S - S A (A S A + D^2)^{-1} A S, the same for every x_t; its diagonal is the exact q_theta
  variance per basis coefficient (Analytic-DPM's optimum when the mean is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Prediction

__all__ = ["GaussianData"]


@dataclass
class GaussianData:
    """N(mean, cov) over data of ``shape`` (``mean`` and ``cov`` flattened: ``(d,)``, ``(d, d)``)."""

    mean: torch.Tensor
    cov: torch.Tensor
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).reshape(-1)
        self.cov = torch.as_tensor(self.cov, dtype=torch.float64)
        self.shape = tuple(self.shape)

    @classmethod
    def random(cls, shape: tuple[int, ...] = (3,), scale: float = 0.5, seed: int = 0) -> "GaussianData":
        """A seeded mean and a full covariance W W^T / d + scale^2 I / 4 (correlated, well conditioned)."""
        g = torch.Generator().manual_seed(seed)
        d = math.prod(shape)
        w = torch.randn(d, d, generator=g, dtype=torch.float64) * scale
        return cls(0.5 * torch.randn(d, generator=g, dtype=torch.float64), w @ w.T / d + (scale ** 2 / 4) * torch.eye(
            d, dtype=torch.float64), shape)

    @property
    def dims(self) -> int:
        return self.mean.numel()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws ``(n, *shape)`` float64."""
        z = torch.randn(n, self.dims, generator=generator, dtype=torch.float64)
        return (self.mean + z @ torch.linalg.cholesky(self.cov).T).reshape(n, *self.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; mean, cov) ``(n,)`` float64."""
        dist = torch.distributions.MultivariateNormal(self.mean, self.cov)
        return dist.log_prob(x.reshape(x.shape[0], -1).to(torch.float64).cpu())

    # --------------------------------------------------------------------------------------- the posterior
    def _basis(self, corruption: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(B mu, B Sigma B^T) flattened."""
        eye = torch.eye(self.dims, dtype=torch.float64).reshape(self.dims, *self.shape)
        bmat = corruption.to_basis(eye).reshape(self.dims, -1).T  # column i = B e_i
        return bmat @ self.mean, bmat @ self.cov @ bmat.T

    def _amplitudes(self, corruption: Any, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = corruption.marginal(torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu(),
                                torch.zeros((1, *self.shape), dtype=torch.float64), derivatives=False)
        a = m.a64.expand(m.a64.shape[0], *self.shape).reshape(m.a64.shape[0], -1)
        s = m.s64.expand(m.s64.shape[0], *self.shape).reshape(m.s64.shape[0], -1)
        return a, s

    def _gain(self, corruption: Any, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(m, a, K = S A (A S A + D^2)^{-1}, posterior covariance) per time row."""
        m, S = self._basis(corruption)
        a, s = self._amplitudes(corruption, t, None)
        A = torch.diag_embed(a)
        inner = A @ S @ A + torch.diag_embed(s * s)
        K = torch.linalg.solve(inner, A @ S).transpose(-1, -2)  # S A inner^{-1} (inner, S symmetric)
        return m, a, K, S - K @ A @ S

    def denoiser(self, corruption: Any):
        """The exact E[x_0 | x_t] as a denoiser ``(x_t, t, generator) -> Prediction`` (differentiable in x_t)."""

        def predict(x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> Prediction:
            m, a, K, _ = self._gain(corruption, t)
            c_t = corruption.to_basis(x_t.to(torch.float64)).reshape(x_t.shape[0], -1)
            c0 = m + ((c_t - a * m)[:, None, :] @ K.transpose(-1, -2))[:, 0]
            x0 = corruption.from_basis(c0.reshape(x_t.shape[0], *self.shape))
            return Prediction(x0, x0, x0)

        return predict

    def variance(self, corruption: Any):
        """The exact q_theta variance source ``(t, x_t) -> diag Cov[B x_0 | x_t]`` ``(batch, *shape)``."""

        def source(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
            *_, post = self._gain(corruption, t)
            diag = torch.diagonal(post, dim1=-2, dim2=-1).clamp_min(0)
            return diag.reshape(diag.shape[0], *self.shape).to(x_t.device)

        return source
