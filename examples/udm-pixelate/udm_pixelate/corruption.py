"""The ``pixelate`` corruption: an average-pool pyramid walked with t, plus Gaussian noise.

    x_t = F_t(x_0, eps) = A_t x_0 + sigma_t eps,      eps ~ N(0, I),      sigma_t = sigma_max t

    A_t = (1 - f) P_{j-1} + f P_j,     u = L t,  j = ceil(u) in 1..L,  f = u - (j - 1) in [0, 1]

P_j x is x average-pooled over 2^j x 2^j blocks and blown back up (nearest), so P_0 = I and P_L is the
coarsest mosaic. In the orthonormal 2-D Haar basis P_j keeps exactly the coefficients of level > j, so
A_t is diagonal there: coefficient k of level l_k (1 = finest details, L + 1 = block averages) is scaled
by a_k(t) = clamp(l_k - L t, 0, 1). That makes ``pixelate`` a linear-Gaussian corruption
(:class:`udm.LinearGaussian` with ``basis = Haar2(L)``): udm derives the exact noise posterior, the
closed-form posterior (``ddpm``), eta-refresh, the score and the ODE velocity from ``amplitudes`` alone.

F_t is continuous and piecewise linear in t, with kinks at t = j / L; its t-derivative is taken from
below (the one a sampler stepping down from t needs), so Euler is exact on any grid containing the kinks.
The prior x_1 = P_L x_0 + sigma_max eps needs the law of the coarse mosaic, which :meth:`fit` estimates
as a Gaussian (mean and full covariance of the 2^L-pooled pixels) and ``state_dict`` saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import udm
from udm.bases import Haar2
from udm.errors import ConfigError


class Pixelate(udm.LinearGaussian):
    """Images ``(batch, channels, H, W)`` (H, W divisible by 2^levels) pixelated with t, plus noise.

    Args:
        levels: L, the number of pyramid levels; at t = 1 the blocks are 2^L pixels wide.
        sigma_max: the noise amplitude at t = 1 (sigma_t = sigma_max t); must be > 0 so that the
            noise posterior exists.
        data_range: ``[low, high]`` for optional clamping of x0_hat, e.g. ``[-1, 1]``.
    """

    name = "pixelate"

    def __init__(self, levels: int = 3, sigma_max: float = 0.3,
                 data_range: tuple[float, float] | list[float] | None = None) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ConfigError(f"corruption pixelate: levels must be an integer >= 1; got {levels!r}. Use e.g. levels: 3.")
        if not float(sigma_max) > 0:
            raise ConfigError(f"corruption pixelate: sigma_max must be > 0; got {sigma_max!r}. "
                              "The noise makes F invertible in eps; use e.g. sigma_max: 0.3.")
        super().__init__(prediction="x0")
        self.levels, self.sigma_max, self.basis = levels, float(sigma_max), Haar2(levels)
        self.data_range = tuple(data_range) if data_range is not None else None
        self._mean: torch.Tensor | None = None  # coarse-pixel mean (D,), D = C (H/2^L) (W/2^L)
        self._chol: torch.Tensor | None = None  # Cholesky factor of their covariance (D, D)

    def __repr__(self) -> str:
        return f"Pixelate(levels={self.levels}, sigma_max={self.sigma_max})"

    def _level_gap(self, t: torch.Tensor, shape) -> torch.Tensor:
        """l_k - L t ``(n, 1, H, W)`` float64."""
        b = 2**self.levels
        if len(shape) != 3 or shape[-1] % b or shape[-2] % b:
            raise ConfigError(f"corruption pixelate: data must have shape (batch, channels, H, W) with H and W "
                              f"divisible by 2^levels = {b}; got per-sample shape {tuple(shape)}. Lower levels or resize.")
        level = self.basis.levels_map(*shape[-2:]).to(device=t.device, dtype=torch.float64)
        return level - self.levels * t.to(torch.float64)[:, None, None, None]

    def amplitudes(self, t, shape):
        return self._level_gap(t, shape).clamp(0, 1), self.sigma_max * t.to(torch.float64)

    def amplitude_derivatives(self, t, shape):
        gap = self._level_gap(t, shape)
        return -self.levels * ((gap >= 0) & (gap < 1)).to(torch.float64), torch.full_like(t, self.sigma_max,
                                                                                           dtype=torch.float64)

    def blur_operator(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A_t x_0 ``(batch, C, H, W)`` for t ``(batch,)`` or ``(1,)`` in [0, 1]."""
        a, _ = self.amplitudes(torch.as_tensor(t, dtype=torch.float64).reshape(-1), tuple(x0.shape[1:]))
        return self.from_basis(self.to_basis(x0) * a.to(x0.dtype))

    def fit(self, data: torch.Tensor) -> None:
        """Estimate the Gaussian law of the coarse mosaic avg_pool(x_0, 2^L) from ``data (n, C, H, W)``."""
        self._level_gap(torch.zeros(1), tuple(data.shape[1:]))
        coarse = F.avg_pool2d(data.double(), 2**self.levels).flatten(1)
        cov = torch.atleast_2d(torch.cov(coarse.T)) + 1e-6 * torch.eye(coarse.shape[1], dtype=torch.float64)
        self._mean, self._chol = coarse.mean(0), torch.linalg.cholesky(cov)

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_1 = P_L x_0 + sigma_max eps with the coarse mosaic drawn from the fitted Gaussian."""
        if self._mean is None:
            raise ConfigError("corruption pixelate: the prior must be fitted before sampling; got an unfitted "
                              "corruption. Call corruption.fit(data) first (udm.train and `udm run` do).")
        n, c, h, w = shape
        b = 2**self.levels
        z = torch.randn(n, self._mean.numel(), generator=generator, device=device, dtype=torch.float64)
        coarse = (self._mean.to(z.device) + z @ self._chol.to(z.device).T).reshape(n, c, h // b, w // b)
        x = F.interpolate(coarse, scale_factor=b, mode="nearest").to(dtype or torch.float32)
        return x + self.sigma_max * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self._mean is None else {"mean": self._mean, "chol": self._chol}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._mean, self._chol = state.get("mean"), state.get("chol")
