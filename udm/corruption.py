"""The forward-corruption contract, x_t = F_t(x_0, eps) (DESIGN.md §3, MATH.md §6.1).

A corruption is any object with the *required* members of :class:`Corruption`; subclassing it is
the easy way. Optional capabilities are discovered from the object (a method is there or it is
not) by :func:`capabilities`; each unlocks samplers (MATH.md §6.3):

==================  ===========================================================  ==================
capability          signature                                                     unlocks
==================  ===========================================================  ==================
noise_posterior     ``(x_t, x_0, t, generator) -> eps_hat`` ~ p(eps | x_t, x_0)  invert, residual, ode
refresh_noise       ``(eps, amount, generator) -> eps'``, q(eps)-invariant        refresh
posterior           ``(x_t, x_0, t, s, generator) -> x_s`` ~ p(x_s | x_t, x_0)   posterior
schedule            ``(t) -> AffineSchedule`` for F = alpha_t x_0 + sigma_t eps   eta-refresh, conversions
fit                 ``(data) -> None``; statistics the prior needs                (saved with state_dict)
masked_count        ``(x_t, t, s, generator) -> (batch,)`` how many of x_t's      confidence, maskgit
                    ``mask_id`` positions stay masked at s ~ p(|S_s| | S_t)
nll                 ``(output, x0, eps, x_t, t) -> (batch,)`` exact              the loss (replaces
                    -log q_theta(x_0 | x_t) for structured q_theta (deletion)     the family's)
sample_x0           ``(output, x_t, t, generator) -> x0_hat`` drawn from a        the Denoiser (replaces
                    structured q_theta (deletion: counts, then tokens)            to_x0 + family.point)
vector_space        ``data_kind == "continuous"`` (x_t + a - b makes sense)        residual, ode
                    unless the class sets ``vector_space = False`` (opt-out when
                    F is not differentiable in t, e.g. masking: velocity = 0)
==================  ===========================================================  ==================

Conventions: ``t`` is a float tensor of shape ``(batch,)`` in [0, 1] (samplers may pass ``(1,)``,
which must broadcast); data at t = 0, F_0(x_0, .) = x_0; every draw takes an explicit generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ._tensor import append_dims

__all__ = ["Corruption", "GaussianNoise", "capabilities", "OPTIONAL_CAPABILITIES"]

OPTIONAL_CAPABILITIES = ("noise_posterior", "refresh_noise", "posterior", "schedule", "fit", "masked_count",
                         "nll", "sample_x0")


class Corruption(ABC):
    """Base class of forward corruptions.

    Class attributes:
        name: registry name.
        data_kind: ``"continuous"`` (float tensors ``(batch, ...)``), ``"tokens"``
            (``LongTensor (batch, length)``) or ``"sequences"`` (variable-length batches).
        family: the q_theta(x_0 | x_t) family, which fixes the loss: ``"gaussian"`` (squared
            error), ``"laplace"`` (L1) or ``"categorical"`` (cross-entropy).
        data_range: ``(low, high)`` for optional clamping of x0_hat, or ``None``.
    """

    name: ClassVar[str] = ""
    data_kind: ClassVar[str] = "continuous"
    family: str = "gaussian"
    data_range: tuple[float, float] | None = None

    # ---------------------------------------------------------------- required
    @abstractmethod
    def sample_noise(self, x0: torch.Tensor, generator: torch.Generator | None) -> Any:
        """Draw eps ~ q(eps) for a batch shaped like ``x0``."""

    @abstractmethod
    def forward(self, x0: torch.Tensor, eps: Any, t: torch.Tensor) -> torch.Tensor:
        """x_t = F_t(x_0, eps); deterministic given its inputs; F_0(x_0, eps) = x_0."""

    @abstractmethod
    def sample_prior(self, shape: tuple[int, ...], generator: torch.Generator | None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
        """Draw x_1 for a batch of ``shape`` (batch first)."""

    # ------------------------------------------------- model-output convention
    def target(self, x0: torch.Tensor, eps: Any, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for (x_0, eps, t). Default: x_0 itself."""
        return x0

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Convert the network's output to the parameters of q_theta(x_0 | x_t). Default: identity."""
        return output

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weight ``(batch,)``, or ``None`` for no weighting (the default)."""
        return None

    def loss_mask(self, x0: Any, x_t: Any) -> torch.Tensor | None:
        """For categorical families: bool mask ``(batch, length)`` of positions the loss covers."""
        return None

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted statistics to save with a checkpoint (tensors only). Default: none."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected no state; got keys {sorted(state)}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GaussianNoise:
    """Mixin for corruptions whose noise law is q(eps) = N(0, I) shaped like x_0.

    Supplies ``sample_noise`` and the q-invariant AR(1) kernel ``refresh_noise``
    (MATH.md eq. 1.10): eps' = sqrt(1 - a^2) eps + a z, z ~ N(0, I), a in [0, 1].
    """

    def sample_noise(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def refresh_noise(self, eps: torch.Tensor, amount: torch.Tensor | float,
                      generator: torch.Generator | None) -> torch.Tensor:
        a = torch.as_tensor(amount, dtype=eps.dtype, device=eps.device)
        if a.ndim:
            a = append_dims(a, eps.ndim)
        z = torch.randn(eps.shape, generator=generator, device=eps.device, dtype=eps.dtype)
        return (1 - a * a).clamp_min(0).sqrt() * eps + a * z


def capabilities(corruption: Any) -> frozenset[str]:
    """The optional capabilities ``corruption`` offers, discovered from the object itself."""
    caps = {c for c in OPTIONAL_CAPABILITIES if callable(getattr(corruption, c, None))}
    if getattr(corruption, "data_kind", "continuous") == "continuous" and getattr(corruption, "vector_space", True):
        caps.add("vector_space")
    return frozenset(caps)
