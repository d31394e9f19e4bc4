"""The ``pixelate`` corruption: an average-pool pyramid walked with t, plus Gaussian noise.

    x_t = F_t(x_0, eps) = A_t x_0 + sigma_t eps,      eps ~ N(0, I),      sigma_t = sigma_max t

    A_t = (1 - f) P_{j-1} + f P_j,     u = L t,  j = ceil(u) in 1..L,  f = u - (j - 1) in [0, 1]

P_j x is x average-pooled over 2^j x 2^j blocks and blown back up (nearest), so P_0 = I and P_L is the
coarsest mosaic; A_t interpolates linearly between neighbouring levels, which makes F_t continuous and
piecewise linear in t, with kinks at t = j / L. There d/dt F_t (``torch.func.jvp``, for the ODE samplers)
is the derivative from below, the one a sampler stepping down from t needs; Euler is exact on any grid
that contains the kinks, the other solvers are exact between kinks and first order across one.
F is invertible in eps for t > 0, so ``noise_posterior`` is exact: eps = (x_t - A_t x_0) / sigma_t.
The prior x_1 = P_L x_0 + sigma_max eps needs the law of the coarse mosaic, which :meth:`fit` estimates
as a Gaussian (mean and full covariance of the 2^L-pooled pixels) and ``state_dict`` saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import udm
from udm.errors import ConfigError


class Pixelate(udm.GaussianNoise, udm.Corruption):
    """Images ``(batch, channels, H, W)`` (H, W divisible by 2^levels) pixelated with t, plus noise.

    Args:
        levels: L, the number of pyramid levels; at t = 1 the blocks are 2^L pixels wide.
        sigma_max: the noise amplitude at t = 1 (sigma_t = sigma_max t); must be > 0 so that the
            noise posterior exists.
        data_range: ``[low, high]`` for optional clamping of x0_hat, e.g. ``[-1, 1]``.
    """

    name = "pixelate"
    data_kind = "continuous"
    family = "gaussian"

    def __init__(self, levels: int = 3, sigma_max: float = 0.3,
                 data_range: tuple[float, float] | list[float] | None = None) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ConfigError(f"corruption pixelate: levels must be an integer >= 1; got {levels!r}. Use e.g. levels: 3.")
        if not float(sigma_max) > 0:
            raise ConfigError(f"corruption pixelate: sigma_max must be > 0; got {sigma_max!r}. "
                              "The noise makes F invertible in eps; use e.g. sigma_max: 0.3.")
        self.levels, self.sigma_max = levels, float(sigma_max)
        self.data_range = tuple(data_range) if data_range is not None else None
        self._mean: torch.Tensor | None = None  # coarse-pixel mean (D,), D = C (H/2^L) (W/2^L)
        self._chol: torch.Tensor | None = None  # Cholesky factor of their covariance (D, D)

    def __repr__(self) -> str:
        return f"Pixelate(levels={self.levels}, sigma_max={self.sigma_max})"

    # ------------------------------------------------------------------ pieces
    def _check(self, x: torch.Tensor) -> None:
        b = 2**self.levels
        if x.ndim != 4 or x.shape[-1] % b or x.shape[-2] % b:
            raise ConfigError(f"corruption pixelate: data must have shape (batch, channels, H, W) with H and W "
                              f"divisible by 2^levels = {b}; got shape {tuple(x.shape)}. Lower levels or resize.")

    def _level(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """P_j x: mean over 2^j x 2^j blocks, repeated back to full size."""
        return x if j == 0 else F.interpolate(F.avg_pool2d(x, 2**j), scale_factor=2**j, mode="nearest")

    def blur_operator(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A_t x_0 ``(batch, C, H, W)`` for t ``(batch,)`` or ``(1,)`` in [0, 1]."""
        self._check(x0)
        u = self.levels * t.to(torch.float64)
        j = torch.ceil(u - 1e-9).clamp(1, self.levels)  # 1e-9: u = 2.0000000000000004 is the kink at 2
        f = u - (j - 1)
        out = torch.zeros_like(x0)
        for level in range(self.levels + 1):
            w = torch.where(j - 1 == level, 1 - f, 0.0) + torch.where(j == level, f, 0.0)
            out = out + udm.append_dims(w.to(x0.dtype), x0.ndim) * self._level(x0, level)
        return out

    def _sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return udm.append_dims((self.sigma_max * t.to(torch.float64)).to(like.dtype), like.ndim)

    # ---------------------------------------------------------------- contract
    def forward(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.blur_operator(x0, t) + self._sigma(t, x0) * eps

    def noise_posterior(self, x_t, x0, t, generator=None) -> torch.Tensor:
        """The exact inverse eps = (x_t - A_t x_0) / sigma_t (a point mass; t > 0)."""
        return (x_t - self.blur_operator(x0, t)) / self._sigma(t, x_t)

    def fit(self, data: torch.Tensor) -> None:
        """Estimate the Gaussian law of the coarse mosaic avg_pool(x_0, 2^L) from ``data (n, C, H, W)``."""
        self._check(data)
        coarse = F.avg_pool2d(data.double(), 2**self.levels).flatten(1)
        mean = coarse.mean(0)
        cov = torch.atleast_2d(torch.cov(coarse.T)) + 1e-6 * torch.eye(coarse.shape[1], dtype=torch.float64)
        self._mean, self._chol = mean, torch.linalg.cholesky(cov)

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
