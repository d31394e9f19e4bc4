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

It is the linear-Gaussian layer (:class:`udm.LinearGaussian`) in the DCT basis, per frequency (i, j)
a_ij(t) = alpha_t exp(-lambda_ij tau(t)) and s_ij(t) = sigma_t, so udm derives everything ``gaussian``
has: the exact noise posterior (a fresh draw where sigma_t = 0, where eps does not enter x_t), the DDPM
posterior per frequency (``posterior``, ``ddpm``), DDIM-eta per frequency, the score, the SDE coefficients
and the ``eps``/``v``/``score``/``flow`` targets where they are non-singular (with ``sigma = 0`` only
``x0`` is; the default). ``residual`` is Cold Diffusion's Algorithm 2 at ``sigma = 0``.

The prior: x_1 = alpha_1 D_1(x_0) + sigma_1 eps with D_1(x_0) replaced by the per-channel mean m of
x_0 broadcast over pixels, m ~ N(mu, Sigma) fitted by :meth:`BlurCorruption.fit` (the neglected part,
D_1(x_0) - m, has at most 1e-3 of each non-constant mode's amplitude with the default ``blur_max``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

import udm
from udm.bases import DCT2, dct_matrix
from udm.errors import ConfigError, did_you_mean
from udm.parameterization import PredictionName, WeightingName

__all__ = ["BlurCorruption", "dct_matrix", "heat_decay", "heat_frequencies", "BLUR_SCHEDULES", "NOISE_SCHEDULES"]

BLUR_SCHEDULES = ("sin2", "log")
NOISE_SCHEDULES = ("linear", "vp")
FAMILIES = ("gaussian", "laplace")
LAPLACIANS = ("continuous", "grid")
_DCT = DCT2()


def heat_frequencies(h: int, w: int, laplacian: str = "continuous") -> torch.Tensor:
    """Eigenvalues ``(h, w)`` float64 of -Laplacian with Neumann boundaries on the DCT-II basis
    (:meth:`udm.bases.DCT2.frequencies`)."""
    return DCT2.frequencies(h, w, laplacian)


def heat_decay(x: torch.Tensor, tau: torch.Tensor, laplacian: str = "continuous") -> torch.Tensor:
    """Exact heat dissipation of images ``x`` ``(B, C, H, W)`` for times ``tau`` ``(B,)`` (or ``(1,)``)."""
    h, w = x.shape[-2:]
    lam = heat_frequencies(h, w, laplacian).to(x.device)
    decay = torch.exp(-lam[None] * tau.to(torch.float64)[:, None, None])[:, None].to(x.dtype)
    return _DCT.inverse(_DCT.forward(x) * decay)


class BlurCorruption(udm.LinearGaussian):
    """Blurring diffusion / inverse heat dissipation / Cold Diffusion blur (see the module docstring).

    Args:
        blur: blur schedule ``sin2`` | ``log``.
        blur_max: sigma_B(1) in pixels (``None``: fully blurred to 1e-3 for the image size).
        blur_min: the ``log`` schedule's first blur std in pixels (Rissanen et al.: 0.5).
        noise: noise schedule ``linear`` | ``vp``.
        sigma: noise scale >= 0 (0: deterministic Cold Diffusion blur).
        family: q_theta family ``gaussian`` (squared error) | ``laplace`` (L1, Cold Diffusion; only with
            ``prediction: x0`` and ``weighting: none``).
        laplacian: ``continuous`` (the papers' lambda) | ``grid`` (finite-difference Laplacian).
        data_range: ``[low, high]`` for optional clamping of x0_hat.
        prediction, weighting, gamma: what the network outputs and the loss weight, per DCT frequency
            (:class:`udm.Parameterization`); default ``x0``.
    """

    name = "blur"
    data_kind = "continuous"
    basis = _DCT

    def __init__(self, blur: Literal["sin2", "log"] = "sin2", blur_max: float | None = None, blur_min: float = 0.5,
                 noise: Literal["linear", "vp"] = "linear", sigma: float = 0.1,
                 family: Literal["gaussian", "laplace"] = "gaussian",
                 laplacian: Literal["continuous", "grid"] = "continuous",
                 data_range: tuple[float, float] | list[float] | None = (-1.0, 1.0),
                 prediction: PredictionName = "x0", weighting: WeightingName = "none", gamma: float = 5.0) -> None:
        super().__init__(prediction, weighting, gamma)
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
        if family == "laplace" and (prediction, weighting) != ("x0", "none"):
            raise ConfigError(f"corruption blur: family 'laplace' (L1) needs prediction 'x0' and weighting 'none'; "
                              f"got prediction={prediction!r}, weighting={weighting!r}. Use family 'gaussian' for "
                              f"other targets.")
        self.data_range = tuple(data_range) if data_range is not None else None
        self._mean: torch.Tensor | None = None  # (C,) float64
        self._cov: torch.Tensor | None = None  # (C, C) float64
        self._check_parameterization()

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
        t = torch.as_tensor(t, dtype=torch.float64)
        smax = self.sigma_blur_max(h, w)
        if self.blur == "sin2":
            return 0.5 * (smax * torch.sin(0.5 * math.pi * t) ** 2) ** 2
        b0 = min(self.blur_min, smax / 2)
        return 0.5 * b0**2 * torch.expm1(2 * t * math.log(smax / b0))

    def noise_amplitudes(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), float64 ``(batch,)``: the scalar part of the amplitudes."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.noise == "linear":
            return torch.ones_like(t), self.sigma * t
        s = self.sigma * torch.sin(0.5 * math.pi * t)
        return (1 - s * s).clamp_min(0).sqrt(), s

    def degrade(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """alpha_t D_t(x_0), the noise-free part of x_t."""
        self._check_images(x0)
        alpha, _ = self.noise_amplitudes(t)
        out = heat_decay(x0, self.tau(t, *x0.shape[-2:]), self.laplacian)
        return udm.append_dims(alpha.to(x0.dtype), x0.ndim) * out

    # ------------------------------------------------------ linear-Gaussian
    def amplitudes(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """a_ij(t) = alpha_t exp(-lambda_ij tau(t)) ``(n, 1, H, W)`` and s(t) = sigma_t ``(n,)``, float64."""
        if len(shape) != 3:
            raise ConfigError(f"corruption blur: data must be images (channels, height, width) per sample; got "
                              f"per-sample shape {tuple(shape)}. Reshape vectors to (n, 1, H, W) or use the gaussian "
                              f"corruption.")
        h, w = shape[-2:]
        alpha, sigma = self.noise_amplitudes(t)
        lam = heat_frequencies(h, w, self.laplacian).to(t.device)
        decay = torch.exp(-lam[None] * self.tau(t, h, w)[:, None, None])
        return (alpha[:, None, None] * decay)[:, None], sigma

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
        alpha, s = (float(v) for v in self.noise_amplitudes(torch.ones(1)))
        return alpha * m.to(dtype)[:, :, None, None].expand(shape) + s * eps

    def prior_logp(self, x1: torch.Tensor) -> torch.Tensor:
        """log-density ``(batch,)`` of :meth:`sample_prior`'s law (nats): in the DCT basis the channels' constant
        coefficients are N(alpha_1 sqrt(HW) mu, alpha_1^2 HW Sigma + sigma_1^2 I), every other coefficient
        N(0, sigma_1^2)."""
        if self._mean is None:
            raise ConfigError("corruption blur: prior_logp needs fitted statistics; call fit(data) first "
                              "(udm.train does this).")
        self._check_images(x1)
        c = self.to_basis(x1.to(torch.float64))
        hw = x1.shape[-2] * x1.shape[-1]
        alpha, s = (float(v) for v in self.noise_amplitudes(torch.ones(1)))
        cov = alpha ** 2 * hw * self._cov + s ** 2 * torch.eye(len(self._cov), dtype=torch.float64)
        dc = torch.distributions.MultivariateNormal((alpha * math.sqrt(hw) * self._mean).to(c.device), cov.to(c.device))
        rest = c.clone()
        rest[:, :, 0, 0] = 0
        n_rest = c[0].numel() - c.shape[1]
        return dc.log_prob(c[:, :, 0, 0]) - 0.5 * (rest.square().flatten(1).sum(1) / s ** 2
                                                  + n_rest * math.log(2 * math.pi * s ** 2))

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
