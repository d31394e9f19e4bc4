"""The forward-corruption contract, x_t = F_t(x_0, eps) (docs/reference.md, the corruptions hook).

A corruption is any object with the *required* members of :class:`Corruption`; subclassing it is
the easy way. Optional capabilities are typed protocols (:data:`PROTOCOLS`), discovered from the object
(its methods are there or not) by :func:`capabilities` unless the object reports them itself with a
``capabilities()`` method; each unlocks samplers (docs/explanation.md):

==================  ===========================================================  ==================
capability          signature                                                     unlocks
==================  ===========================================================  ==================
noise_posterior     ``(x_t, x_0, t, generator) -> eps_hat`` ~ p(eps | x_t, x_0)  invert, residual, ode
refresh_noise       ``(eps, amount, generator) -> eps'``, q(eps)-invariant        refresh
posterior           ``(x_t, x_0, t, s, generator) -> x_s`` ~ p(x_s | x_t, x_0)   posterior
schedule            ``(t) -> AffineSchedule`` for F = alpha_t x_0 + sigma_t eps   logsnr spacing, oracles
linear_gaussian     :class:`udm.LinearGaussian`: per-coefficient amplitudes in    eta-refresh, ddpm, targets,
                    an orthonormal basis (``amplitudes``, ``grid_table``, ...)     q_theta variances
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

Wrappers built from other corruptions (chains, products, latent corruptions: :mod:`udm.composition`) report what
they offer with ``capabilities()`` and why they lack the rest with ``capability_notes()`` (:func:`capability_notes`;
``udm plugins`` and capability errors show the reasons).

Two optional hints let samplers skip model calls that cannot change anything (docs/howto-sampler.md,
"Model calls"): ``time_invariant_posterior = True`` declares that q(x_0 | x_t) is the same function of x_t
at every t (masking: only the visible tokens carry information), so a state that did not change keeps its
prediction; ``uncorrupted(x_t) -> (batch,) bool`` names rows with nothing corrupted (x_0 = x_t).

Conventions: ``t`` is a float tensor of shape ``(batch,)`` in [0, 1] (samplers may pass ``(1,)``,
which must broadcast); data at t = 0, F_0(x_0, .) = x_0; every draw takes an explicit generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ._tensor import append_dims

__all__ = ["Corruption", "GaussianNoise", "capabilities", "capability_notes", "describe_missing", "discover_capabilities",
           "OPTIONAL_CAPABILITIES", "PROTOCOLS"]

OPTIONAL_CAPABILITIES = ("noise_posterior", "refresh_noise", "posterior", "schedule", "fit", "masked_count",
                         "nll", "sample_x0", "linear_gaussian")


class Corruption(ABC):
    """Base class of forward corruptions.

    Class attributes:
        name: registry name.
        data_kind: ``"continuous"`` (float tensors ``(batch, ...)``), ``"tokens"``
            (``LongTensor (batch, length)``) or ``"sequences"`` (variable-length batches).
        family: the q_theta(x_0 | x_t) family, which fixes the loss: ``"gaussian"`` (squared
            error), ``"laplace"`` (L1) or ``"categorical"`` (cross-entropy).
        data_range: ``(low, high)`` for optional clamping of x0_hat, or ``None``.
        time_invariant_posterior: ``True`` when q(x_0 | x_t) does not depend on t given x_t (samplers then
            reuse a prediction while the state is unchanged, without a model call).
    """

    name: ClassVar[str] = ""
    data_kind: ClassVar[str] = "continuous"
    family: str = "gaussian"
    data_range: tuple[float, float] | None = None
    time_invariant_posterior: ClassVar[bool] = False

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
    (docs/math.md, "Predict, then correct"): eps' = sqrt(1 - a^2) eps + a z, z ~ N(0, I), a in [0, 1].
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


@runtime_checkable
class HasNoisePosterior(Protocol):
    def noise_posterior(self, x_t: Any, x0: Any, t: torch.Tensor, generator: Any = None) -> Any: ...


@runtime_checkable
class HasRefreshNoise(Protocol):
    def refresh_noise(self, eps: Any, amount: Any, generator: Any) -> Any: ...


@runtime_checkable
class HasPosterior(Protocol):
    def posterior(self, x_t: Any, x0: Any, t: torch.Tensor, s: torch.Tensor, generator: Any) -> Any: ...


@runtime_checkable
class HasSchedule(Protocol):
    def schedule(self, t: torch.Tensor) -> Any: ...


@runtime_checkable
class HasFit(Protocol):
    def fit(self, data: Any) -> None: ...


@runtime_checkable
class HasMaskedCount(Protocol):
    def masked_count(self, x_t: Any, t: torch.Tensor, s: torch.Tensor, generator: Any) -> torch.Tensor: ...


@runtime_checkable
class HasNll(Protocol):
    def nll(self, output: Any, x0: Any, eps: Any, x_t: Any, t: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasSampleX0(Protocol):
    def sample_x0(self, output: Any, x_t: Any, t: torch.Tensor, generator: Any) -> Any: ...


@runtime_checkable
class IsLinearGaussian(Protocol):
    """The linear-Gaussian layer (:class:`udm.LinearGaussian`): per-coefficient amplitudes in a basis."""

    def amplitudes(self, t: torch.Tensor, shape: tuple[int, ...]) -> Any: ...
    def marginals(self, grid: torch.Tensor, like: Any) -> Any: ...
    def marginal(self, t: Any, like: Any) -> Any: ...
    def apply(self, m: Any, x0: Any, eps: Any) -> Any: ...
    def invert_noise(self, m: Any, x_t: Any, x0: Any, generator: Any = None) -> Any: ...
    def posterior_step(self, mt: Any, ms: Any, x_t: Any, x0: Any, generator: Any) -> Any: ...
    def refresh_step(self, mt: Any, ms: Any, x_t: Any, x0: Any, eta: float, generator: Any) -> Any: ...
    def to_basis(self, x: Any) -> Any: ...
    def from_basis(self, c: Any) -> Any: ...


#: capability name -> the typed protocol an object must satisfy to offer it
PROTOCOLS: dict[str, type] = {
    "noise_posterior": HasNoisePosterior, "refresh_noise": HasRefreshNoise, "posterior": HasPosterior,
    "schedule": HasSchedule, "fit": HasFit, "masked_count": HasMaskedCount, "nll": HasNll,
    "sample_x0": HasSampleX0, "linear_gaussian": IsLinearGaussian,
}


def capabilities(corruption: Any) -> frozenset[str]:
    """The optional capabilities ``corruption`` offers.

    An object may say itself what it really supports with a ``capabilities()`` method (wrappers such as
    chains do); otherwise they are discovered from the object: a capability is offered when the object
    satisfies its typed protocol (:data:`PROTOCOLS`), and ``vector_space`` when its data are continuous
    and it does not set ``vector_space = False``.
    """
    own = getattr(corruption, "capabilities", None)
    if callable(own) and not isinstance(corruption, type):
        return frozenset(own())
    return discover_capabilities(corruption)


def capability_notes(corruption: Any) -> dict[str, str]:
    """Capability -> why ``corruption`` does not offer it, for the objects that say (wrappers such as chains
    and latent corruptions, through a ``capability_notes()`` method); empty for the others."""
    own = getattr(corruption, "capability_notes", None)
    if callable(own) and not isinstance(corruption, type):
        return {k: str(v) for k, v in own().items() if k not in capabilities(corruption)}
    return {}


def lacks(corruption: Any, needed: list[str] | tuple[str, ...], missing: list[str] | tuple[str, ...]) -> str:
    """The middle of every capability error: ``"corruption 'x' must offer a, b; it lacks b (why)"``."""
    name = getattr(corruption, "name", type(corruption).__name__)
    return f"corruption {name!r} must offer {', '.join(needed)}; it lacks {describe_missing(corruption, missing)}"


def describe_missing(corruption: Any, missing: list[str] | tuple[str, ...]) -> str:
    """``"a, b (why b is not offered)"``: the missing capabilities, each with the corruption's reason when it
    gives one (:func:`capability_notes`)."""
    notes = capability_notes(corruption) if missing else {}
    return ", ".join(f"{c} ({notes[c]})" if c in notes else c for c in missing)


def discover_capabilities(corruption: Any) -> frozenset[str]:
    """Capabilities found on the object by protocol (what :func:`capabilities` uses by default)."""
    caps = {name for name, proto in PROTOCOLS.items()
            if all(callable(getattr(corruption, m, None)) for m in _methods(proto))}
    if getattr(corruption, "data_kind", "continuous") == "continuous" and getattr(corruption, "vector_space", True):
        caps.add("vector_space")
    return frozenset(caps)


def _methods(proto: type) -> list[str]:
    return [m for m in vars(proto) if not m.startswith("_") and callable(getattr(proto, m))]
