"""The ``mask_pixels`` corruption: masked diffusion of continuous tensors (pixel or patch masks with a fill value).

The continuous counterpart of ``mask`` (registered from the same plugin module, ``udm.plugins.mask``).
Data: float tensors ``(B, C, *spatial)`` (images ``(B, C, H, W)``; channels share one mask) or ``(B, D)``
(every coordinate its own position). Noise: u ~ U[0, 1], one uniform per *patch* of ``patch`` positions along
every spatial dim (``patch=1``: per pixel), float64 ``(B, *spatial / patch)``. With tau(t) the masking schedule
(as ``mask``: ``linear`` tau = t, ``cosine`` tau = 1 - cos(pi t / 2)):

    F_t(x_0, u) = where(M_t(u), fill, x_0),   M_t(u) = {u < tau(t)}  (exact_count: the round(tau P) lowest u)

so x_t keeps the data's shape and dtype and x_1 is all ``fill``.

**The mask is a function of x_t.** ``masked(x_t)`` = the patches whose every value (all channels) equals
``fill``. A patch whose *true* values all equal ``fill`` is therefore read as masked; this is harmless for
sampling (its value is ``fill`` either way, so p(x_s | x_0) is unchanged and ``noise_posterior`` treats such
patches exactly, see there) but the model loses the "visible" bit for it. Pick ``fill`` outside the data range
(e.g. -2 for data in [-1, 1]) to make the mask unambiguous; the default 0.0 is a valid digit level.
Models get the mask as an extra input channel: the built-in ``unet`` with ``mask_fill=<fill>``.

Loss: Gaussian q_theta, squared error on masked positions only (``loss_mask = masked(x_t)``), averaged over all
positions (so a sample's loss scales with its masked fraction); no time weighting (the tau'/tau ELBO weight of
``mask`` belongs to the categorical family). ``to_x0`` keeps visible positions: x0_hat = where(masked, out, x_t).

Samplers: ``noise_posterior`` (exact, reusing the token helpers) and ``refresh_noise`` (per-patch redraw) unlock
invert / refresh / renoise. ``vector_space = False`` withholds the continuous-path rules: ``ode`` would be
silently wrong (F is piecewise constant in t, so d/dt F = 0 almost everywhere and the ODE never unmasks), and
``residual`` equals ``invert`` exactly here (x_t + F_s - F_t = F_s whenever x0_hat keeps the visible pixels).
"""

from __future__ import annotations

import math

import torch

import udm
from udm.errors import ConfigError

from ._tokens import SCHEDULES, check_choice, posterior_noise, redraw, select

__all__ = ["PixelMaskCorruption"]


class PixelMaskCorruption(udm.Corruption):
    """Mask patches of a continuous tensor with a fill value (see the module docstring).

    Args:
        fill: the value masked positions hold (finite float); outside the data range for an unambiguous mask.
        patch: patch side along every spatial dim (>= 1; spatial sizes must be divisible by it).
        schedule: ``linear`` | ``cosine``.
        exact_count: mask exactly round(tau(t) P) of the P patches instead of each with probability tau(t).
    """

    name = "mask_pixels"
    data_kind = "continuous"
    family = "gaussian"
    vector_space = False  # opt out of residual/ode (module docstring)

    def __init__(self, fill: float = 0.0, patch: int = 1, schedule: str = "linear", exact_count: bool = False) -> None:
        where = "corruption mask_pixels"
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
            raise ConfigError(f"{where}: fill must be a finite number; got {fill!r}. "
                              f"Use a value outside the data range, e.g. -2.0 for data in [-1, 1].")
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            raise ConfigError(f"{where}: patch must be an integer >= 1; got {patch!r}. Use 1 for per-pixel masks.")
        check_choice(where, "schedule", schedule, SCHEDULES)
        self.fill, self.patch, self.schedule_name, self.exact_count = float(fill), patch, schedule, bool(exact_count)

    def __repr__(self) -> str:
        return (f"PixelMaskCorruption(fill={self.fill}, patch={self.patch}, schedule={self.schedule_name!r}, "
                f"exact_count={self.exact_count})")

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """Masking probability tau(t) ``(batch,)`` float64."""
        return SCHEDULES[self.schedule_name](torch.as_tensor(t, dtype=torch.float64))[0]

    # ----------------------------------------------------------- patch geometry
    def _spatial(self, shape) -> tuple[int, ...]:
        spatial = tuple(shape[2:]) if len(shape) >= 3 else tuple(shape[1:])
        if len(shape) < 2 or any(n % self.patch for n in spatial):
            raise ConfigError(f"corruption mask_pixels: data must be (batch, channels, *spatial) or (batch, dim) "
                              f"with spatial sizes divisible by patch={self.patch}; got shape {tuple(shape)}. "
                              f"Change patch or pad the data.")
        return spatial

    def _expand(self, m: torch.Tensor, shape) -> torch.Tensor:
        """Patch-level ``(B, *spatial / patch)`` -> position-level bool shaped ``shape`` (shared by channels)."""
        for i in range(m.ndim - 1):
            m = m.repeat_interleave(self.patch, dim=1 + i)
        return m.unsqueeze(1).expand(shape) if len(shape) >= 3 else m

    def _patch_all(self, eq: torch.Tensor) -> torch.Tensor:
        """Position-level bool ``(B, ...)`` -> ``(B, *spatial / patch)``: True where the whole patch is True."""
        self._spatial(eq.shape)
        if eq.ndim >= 3:
            eq = eq.all(dim=1)
        for i in range(eq.ndim - 1):
            eq = eq.unflatten(1 + i, (eq.shape[1 + i] // self.patch, self.patch)).all(dim=2 + i)
        return eq

    def masked(self, x_t: torch.Tensor) -> torch.Tensor:
        """Bool shaped like ``x_t``: the positions of patches that hold ``fill`` everywhere (module docstring)."""
        return self._expand(self._patch_all(x_t == self.fill), x_t.shape)

    def _tau(self, t, like: torch.Tensor) -> torch.Tensor:
        return self.tau(t).to(like.device).expand(like.shape[0])

    # --------------------------------------------------------------- contract
    def sample_noise(self, x0, generator):
        shape = (x0.shape[0], *(n // self.patch for n in self._spatial(x0.shape)))
        return torch.rand(shape, generator=generator, device=x0.device, dtype=torch.float64)

    def forward(self, x0, eps, t):
        self._spatial(x0.shape)
        m = select(eps.flatten(1), self._tau(t, x0), self.exact_count).view(eps.shape)
        return torch.where(self._expand(m, x0.shape), torch.tensor(self.fill, dtype=x0.dtype, device=x0.device), x0)

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        """x_1: every position ``fill`` (tau(1) = 1), float ``shape``."""
        return torch.full(tuple(shape), self.fill, dtype=dtype or torch.get_default_dtype(), device=device)

    def noise_posterior(self, x_t, x0, t, generator=None):
        """u ~ q(u | x_t, x_0) ``(B, *spatial / patch)`` float64, exact.

        Patches masked in x_t but not all-``fill`` in x_0 are masked (u < tau); visible ones have u >= tau;
        patches all-``fill`` in x_0 look the same either way and get their prior share: independently masked
        with probability tau (independent), or a uniform subset completing the count round(tau P) (exact_count).
        Then ``posterior_noise`` draws u given the masked set.
        """
        tau = self._tau(t, x_t)
        amb = self._patch_all(x0 == self.fill).flatten(1)
        known = self._patch_all(x_t == self.fill).flatten(1) & ~amb
        r = torch.rand(amb.shape, generator=generator, device=x_t.device, dtype=torch.float64)
        if self.exact_count:
            keys = torch.where(known, -1.0, torch.where(amb, r, 2.0))
            k = torch.round(tau * amb.shape[1]).long()
            chosen = keys.argsort(dim=1).argsort(dim=1) < k[:, None]
        else:
            chosen = known | (amb & (r < tau[:, None]))
        return posterior_noise(chosen, tau, self.exact_count, generator).view(x_t.shape[0], *self._patch_shape(x_t))

    def _patch_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(n // self.patch for n in self._spatial(x.shape))

    def refresh_noise(self, eps, amount, generator):
        """Redraw each patch's u with probability ``amount`` (q-invariant)."""
        return redraw(eps.flatten(1), amount, generator).view(eps.shape)

    # ------------------------------------------------------------------- model
    def to_x0(self, output, x_t, t):
        """x0_hat = where(masked(x_t), output, x_t): visible positions are kept exactly."""
        return torch.where(self.masked(x_t), output, x_t)

    def loss_mask(self, x0, x_t):
        """Squared error on masked positions only (bool shaped like x_t)."""
        return self.masked(x_t)
