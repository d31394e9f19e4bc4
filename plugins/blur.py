"""The ``blur`` corruption: heat dissipation plus noise, x_t = alpha_t D_t(x_0) + sigma_t eps.

Images are ``(batch, channels, height, width)`` floats. D_t solves the heat equation du/dtau = Laplacian u
on the pixel grid with Neumann (reflecting) boundaries up to the dissipation time tau(t). The heat
equation is diagonal in the 2-D DCT-II basis, so it is computed exactly (Rissanen et al. 2023, eq. 3;
Hoogeboom & Salimans 2023, eq. 5)::

    D_t(x) = V_H^T [ exp(-lambda * tau(t)) (.) (V_H x V_W^T) ] V_W,   lambda_ij = pi^2 (i^2/H^2 + j^2/W^2)

with V_n the orthonormal DCT-II matrix (``laplacian="grid"`` uses the finite-difference eigenvalues
4 sin^2(pi i / 2H) + 4 sin^2(pi j / 2W) instead: the heat equation on the pixel grid). Frequency (0, 0) never decays: the fully blurred image is the
per-channel mean. eps ~ N(0, I) (isotropic in pixels = isotropic in DCT space, V is orthogonal).

Blur schedules (sigma_B is the equivalent Gaussian-blur std in pixels, tau = sigma_B^2 / 2):

``sin2``  Hoogeboom & Salimans 2023: sigma_B(t) = blur_max sin^2(pi t / 2).
``log``   Rissanen et al. 2023: sigma_B log-spaced from blur_min to blur_max; shifted so that
          tau(0) = 0: tau(t) = (blur_min^2 (blur_max/blur_min)^(2t) - blur_min^2) / 2.

``blur_max=None`` picks sigma_B(1) = sqrt(2 ln 1000) max(H, W) / pi, where the slowest non-constant mode
(lambda = pi^2 / max(H, W)^2) has decayed to 1e-3: D_1(x_0) is the channel mean to within 0.1 %.

Noise schedules (``sigma`` >= 0 sets the scale; ``sigma = 0`` is Cold Diffusion's deterministic blur):

``linear``  alpha_t = 1, sigma_t = sigma t (small additive noise as in inverse heat dissipation).
``vp``      sigma_t = sigma sin(pi t / 2), alpha_t = sqrt(1 - sigma_t^2) (``sigma`` <= 1; sigma = 1 is
            the cosine schedule of blurring diffusion, where x_1 is pure noise).

Capabilities: ``noise_posterior`` is exact (a point mass (x_t - alpha_t D_t x_0) / sigma_t when sigma_t > 0;
when sigma_t = 0 eps does not enter x_t, so its posterior is the prior and a fresh draw is exact). So
``invert``, ``refresh``, ``residual`` (Cold Diffusion Algorithm 2) and ``ode`` all work, also at sigma = 0,
where ``invert``/``refresh``/``renoise`` coincide with Cold's naive D_s(x0_hat). There is no ``eps``
target: recovering x_0 from eps needs D_t^{-1}, which multiplies frequencies by exp(+lambda tau).

The prior: x_1 = alpha_1 D_1(x_0) + sigma_1 eps with D_1(x_0) replaced by the per-channel mean m of
x_0 broadcast over pixels, m ~ N(mu, Sigma) fitted by :meth:`BlurCorruption.fit` (the neglected part,
D_1(x_0) - m, has at most 1e-3 of each non-constant mode's amplitude with the default ``blur_max``).
"""

from __future__ import annotations

import math

import torch

import udm
from udm.errors import ConfigError, did_you_mean

__all__ = ["BlurCorruption", "dct_matrix", "heat_decay", "BLUR_SCHEDULES", "NOISE_SCHEDULES"]

BLUR_SCHEDULES = ("sin2", "log")
NOISE_SCHEDULES = ("linear", "vp")
FAMILIES = ("gaussian", "laplace")
LAPLACIANS = ("continuous", "grid")


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: V[k, i] = c_k cos(pi (i + 1/2) k / n), c_0 = sqrt(1/n),
    c_k = sqrt(2/n); V V^T = I, so the inverse (DCT-III) is V^T. Built in float64, then cast."""
    i = torch.arange(n, dtype=torch.float64)
    v = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)
    v[0] /= math.sqrt(2.0)
    return v.to(dtype=dtype, device=device)


def heat_frequencies(h: int, w: int, laplacian: str = "continuous") -> torch.Tensor:
    """Eigenvalues ``(h, w)`` float64 of -Laplacian with Neumann boundaries on the DCT-II basis:
    ``continuous`` lambda_ij = pi^2 (i^2/h^2 + j^2/w^2) (the heat equation on [0, h] x [0, w], sampled at
    pixel centres; Gaussian blur of std sigma_B = sqrt(2 tau)), or ``grid`` lambda_ij = 4 sin^2(pi i / 2h)
    + 4 sin^2(pi j / 2w) (the 5-point finite-difference Laplacian on the pixel grid)."""
    ki, kj = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    if laplacian == "grid":
        fi, fj = 4 * torch.sin(0.5 * math.pi * ki / h) ** 2, 4 * torch.sin(0.5 * math.pi * kj / w) ** 2
    else:
        fi, fj = (math.pi * ki / h) ** 2, (math.pi * kj / w) ** 2
    return fi[:, None] + fj[None, :]


def heat_decay(x: torch.Tensor, tau: torch.Tensor, laplacian: str = "continuous") -> torch.Tensor:
    """Exact heat dissipation of images ``x`` ``(B, C, H, W)`` for times ``tau`` ``(B,)`` (or ``(1,)``)."""
    h, w = x.shape[-2:]
    vh, vw = dct_matrix(h, x.dtype, x.device), dct_matrix(w, x.dtype, x.device)
    lam = heat_frequencies(h, w, laplacian).to(x.device)
    decay = torch.exp(-lam[None] * tau.to(torch.float64)[:, None, None])[:, None].to(x.dtype)
    return vh.T @ ((vh @ x @ vw.T) * decay) @ vw


class BlurCorruption(udm.GaussianNoise, udm.Corruption):
    """Blurring diffusion / inverse heat dissipation / Cold Diffusion blur (see the module docstring).

    Args:
        blur: blur schedule ``sin2`` | ``log``.
        blur_max: sigma_B(1) in pixels (``None``: fully blurred to 1e-3 for the image size).
        blur_min: the ``log`` schedule's first blur std in pixels (Rissanen et al.: 0.5).
        noise: noise schedule ``linear`` | ``vp``.
        sigma: noise scale >= 0 (0: deterministic Cold Diffusion blur).
        family: q_theta family ``gaussian`` (squared error) | ``laplace`` (L1, Cold Diffusion).
        laplacian: ``continuous`` (the papers' lambda) | ``grid`` (finite-difference Laplacian).
        data_range: ``[low, high]`` for optional clamping of x0_hat.
    """

    name = "blur"
    data_kind = "continuous"

    def __init__(self, blur: str = "sin2", blur_max: float | None = None, blur_min: float = 0.5,
                 noise: str = "linear", sigma: float = 0.1, family: str = "gaussian", laplacian: str = "continuous",
                 data_range: tuple[float, float] | list[float] | None = (-1.0, 1.0)) -> None:
        for key, value, allowed in (("blur", blur, BLUR_SCHEDULES), ("noise", noise, NOISE_SCHEDULES),
                                    ("family", family, FAMILIES), ("laplacian", laplacian, LAPLACIANS)):
            if value not in allowed:
                raise ConfigError(f"corruption blur: {key} must be one of {', '.join(allowed)}; got {value!r}."
                                  f"{did_you_mean(str(value), allowed)}")
        if blur_max is not None and not blur_max > 0:
            raise ConfigError(f"corruption blur: blur_max must be > 0 (pixels) or None; got {blur_max!r}. "
                              f"Leave it unset to blur fully for the image size.")
        if blur == "log" and not (0 < blur_min and (blur_max is None or blur_min < blur_max)):
            raise ConfigError(f"corruption blur: blur_min must be in (0, blur_max); got blur_min={blur_min!r}, "
                              f"blur_max={blur_max!r}.")
        if not 0 <= sigma <= (1 if noise == "vp" else math.inf):
            bound = "[0, 1] for noise='vp'" if noise == "vp" else ">= 0"
            raise ConfigError(f"corruption blur: sigma must be {bound}; got {sigma!r}. Use 0 for deterministic blur.")
        self.blur, self.blur_max, self.blur_min = blur, blur_max, float(blur_min)
        self.noise, self.sigma, self.family, self.laplacian = noise, float(sigma), family, laplacian
        self.data_range = tuple(data_range) if data_range is not None else None
        self._mean: torch.Tensor | None = None  # (C,) float64
        self._cov: torch.Tensor | None = None  # (C, C) float64

    def __repr__(self) -> str:
        return (f"BlurCorruption(blur={self.blur!r}, blur_max={self.blur_max!r}, noise={self.noise!r}, "
                f"sigma={self.sigma!r}, family={self.family!r})")

    # ------------------------------------------------------------ schedules
    def sigma_blur_max(self, h: int, w: int) -> float:
        """sigma_B(1) in pixels for ``h x w`` images."""
        if self.blur_max is not None:
            return float(self.blur_max)
        return math.sqrt(2 * math.log(1000.0)) * max(h, w) / math.pi

    def tau(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Dissipation time tau(t) = sigma_B(t)^2 / 2, float64 ``(batch,)``; tau(0) = 0."""
        t = torch.as_tensor(t).to(torch.float64)
        smax = self.sigma_blur_max(h, w)
        if self.blur == "sin2":
            return 0.5 * (smax * torch.sin(0.5 * math.pi * t) ** 2) ** 2
        b0 = min(self.blur_min, smax / 2)
        return 0.5 * b0**2 * torch.expm1(2 * t * math.log(smax / b0))

    def amplitudes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), float64 ``(batch,)``."""
        t = torch.as_tensor(t).to(torch.float64)
        if self.noise == "linear":
            return torch.ones_like(t), self.sigma * t
        s = self.sigma * torch.sin(0.5 * math.pi * t)
        return (1 - s * s).clamp_min(0).sqrt(), s

    def degrade(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """alpha_t D_t(x_0), the noise-free part of x_t."""
        self._check_images(x0)
        alpha, _ = self.amplitudes(t)
        out = heat_decay(x0, self.tau(t, *x0.shape[-2:]), self.laplacian)
        return udm.append_dims(alpha.to(x0.dtype), x0.ndim) * out

    # -------------------------------------------------------------- contract
    def forward(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, s = self.amplitudes(t)
        return self.degrade(x0, t) + udm.append_dims(s.to(x0.dtype), x0.ndim) * eps

    def noise_posterior(self, x_t, x0, t, generator=None) -> torch.Tensor:
        """eps = (x_t - alpha_t D_t x_0) / sigma_t where sigma_t > 0; a fresh eps ~ N(0, I) where
        sigma_t = 0 (eps does not enter x_t there, so its posterior is the prior)."""
        _, s = self.amplitudes(t)
        s = s.to(x_t.device).expand(x_t.shape[0])
        if bool((s > 0).all()):
            return (x_t - self.degrade(x0, t)) / udm.append_dims(s.to(x_t.dtype), x_t.ndim)
        fresh = self.sample_noise(x_t, generator)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        inverted = (x_t - self.degrade(x0, t)) / udm.append_dims(safe.to(x_t.dtype), x_t.ndim)
        return torch.where(udm.append_dims(s > 0, x_t.ndim), inverted, fresh)

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_1 = alpha_1 m + sigma_1 eps, m ~ N(mu, Sigma) per image and channel, broadcast over pixels."""
        if self._mean is None:
            raise ConfigError("corruption blur: sample_prior needs fitted statistics; call fit(data) first "
                              "(udm.train does this).")
        shape = tuple(shape)
        if len(shape) != 4 or shape[1] != self._mean.shape[0]:
            raise ConfigError(f"corruption blur: prior shape must be (n, {self._mean.shape[0]}, H, W) like the "
                              f"fitted data; got {shape}. Refit on data of this shape.")
        dtype = dtype or torch.float32
        chol = torch.linalg.cholesky(self._cov + 1e-10 * torch.eye(len(self._cov), dtype=torch.float64))
        z = torch.randn(shape[0], shape[1], generator=generator, device=device, dtype=torch.float64)
        m = self._mean.to(z.device) + z @ chol.T.to(z.device)
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        alpha, s = (float(v) for v in self.amplitudes(torch.ones(1)))
        return alpha * m.to(dtype)[:, :, None, None].expand(shape) + s * eps

    def fit(self, data: torch.Tensor) -> None:
        """Estimate the mean ``(C,)`` and covariance ``(C, C)`` of the per-image channel means of
        ``data`` ``(n, C, H, W)``, n >= 2 (the fully blurred images)."""
        self._check_images(data)
        if data.shape[0] < 2:
            raise ConfigError(f"corruption blur: fit needs at least 2 images; got {data.shape[0]}.")
        m = data.detach().to(torch.float64).mean(dim=(2, 3)).cpu()
        self._mean, self._cov = m.mean(0), torch.atleast_2d(torch.cov(m.T))

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._mean is None:
            return {}
        return {"channel_mean": self._mean.clone(), "channel_cov": self._cov.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self._mean = self._cov = None
            return
        if set(state) != {"channel_mean", "channel_cov"}:
            raise ValueError(f"corruption blur: state keys must be channel_mean, channel_cov; got {sorted(state)}.")
        self._mean = state["channel_mean"].detach().to(torch.float64).cpu().clone()
        self._cov = state["channel_cov"].detach().to(torch.float64).cpu().clone()

    @staticmethod
    def _check_images(x) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"corruption blur: data must be float images (batch, channels, height, width); "
                              f"got {got}. Reshape vectors to (n, 1, H, W) or use the gaussian corruption.")


@udm.hookimpl
def udm_register_corruptions(register):
    register(BlurCorruption)
