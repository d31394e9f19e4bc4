"""Registered likelihood estimators and what they are handed.

An estimator is a function ``estimate(ctx, x0, generator, **options) -> BatchNll`` for one batch of data, plus
what it needs from a corruption; :class:`EstimatorSpec` holds both. The built-ins (``elbo_discrete``,
``elbo_continuous``, ``ode``, ``elbo_masked``, ``elbo_deletion``) are registered by the plugins like any
third-party estimator, through the ``estimator`` plugin kind.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Denoiser, Prediction
from ..errors import CapabilityError
from ..quantisation import Quantisation
from ._result import BatchNll

__all__ = ["EstimatorSpec", "Context", "supported_estimators", "resolve_estimator", "default_estimator"]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered likelihood estimator.

    Attributes:
        name: registry name.
        estimate: ``(ctx, x0, generator, **options) -> BatchNll`` for one batch; its keyword-only
            parameters are the estimator's options (checked like a sampler's: names, types, ranges).
        accepts: ``corruption -> bool``: whether it can run on a corruption.
        requirement: what ``accepts`` asks for, in words (for the error naming the estimators that can run).
        description: one line for ``udm plugins``.
        decoders: how it scores continuous data: ``"density"`` (a density; with uniform dequantisation for
            quantised data) and/or ``"discretised"`` (a discretised decoder, a probability of the levels);
            ``("tokens",)`` for token data (a probability by construction).
        bound: ``True`` when it is an upper bound on the NLL (an ELBO), ``False`` for an estimate.
        default_for: time-type names for which it is the default estimator of a corruption it accepts.
        resolve: ``(ctx, options) -> options``, called once before the batches: fills defaults that depend on the
            model (e.g. the time type's number of steps) and checks option combinations.
    """

    name: str
    estimate: Callable[..., BatchNll]
    accepts: Callable[[Any], bool]
    requirement: str
    description: str = ""
    decoders: tuple[str, ...] = ("density",)
    bound: bool = True
    default_for: tuple[str, ...] = ()
    resolve: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None

    def supports(self, corruption: Any) -> bool:
        return bool(self.accepts(corruption))


def supported_estimators(corruption: Any, registry: Any = None) -> list[str]:
    """Names of the registered estimators that can run on ``corruption``."""
    from .._registry import registry as default_registry

    reg = registry or default_registry()
    return [n for n in reg.names("estimator") if reg.get("estimator", n).supports(corruption)]


def resolve_estimator(name: str | EstimatorSpec, corruption: Any, registry: Any = None) -> EstimatorSpec:
    """The :class:`EstimatorSpec` called ``name``; a :class:`CapabilityError` naming those that can run when
    ``corruption`` cannot support it."""
    from .._registry import registry as default_registry

    reg = registry or default_registry()
    spec = name if isinstance(name, EstimatorSpec) else reg.get("estimator", name)
    if not spec.supports(corruption):
        cname = getattr(corruption, "name", type(corruption).__name__)
        ok = ", ".join(supported_estimators(corruption, reg)) or "(none)"
        raise CapabilityError(f"likelihood estimator {spec.name!r}: the corruption must be {spec.requirement}; got "
                              f"{cname!r}. Estimators {cname!r} supports: {ok}.")
    return spec


def default_estimator(corruption: Any, time_type: Any, registry: Any = None) -> str:
    """The estimator a corruption and time type get when none is named: the first registered one that accepts
    the corruption and declares itself the default for the time type (else the first that accepts it)."""
    from .._registry import registry as default_registry

    reg = registry or default_registry()
    names = supported_estimators(corruption, reg)
    if not names:
        cname = getattr(corruption, "name", type(corruption).__name__)
        raise CapabilityError(f"udm.likelihood: the corruption must be supported by a registered likelihood "
                              f"estimator; got {cname!r}, which none supports. Register an estimator for it "
                              f"(docs/reference.md, the estimators hook).")
    tname = getattr(time_type, "name", None)
    return next((n for n in names if tname in reg.get("estimator", n).default_for), names[0])


@dataclass
class Context:
    """What an estimator is handed besides the batch.

    Attributes:
        corruption, time_type: the model's forward process and time type.
        denoiser: a :class:`udm.Denoiser` (no variance source: estimators read the mean), an object with
            ``predict(x_t, t, generator) -> Prediction`` (the oracles of :mod:`udm.testing`), or a callable
            ``(x_t, t, generator) -> x0_hat`` (taken as q_theta's mean).
        quantisation: the data's levels when the decoder is discretised; ``None`` for a density decoder.
        dtype: the dtype the model reads (continuous x_t is cast to it); ``None``: as given.
    """

    corruption: Any
    time_type: Any
    denoiser: Any
    quantisation: Quantisation | None = None
    dtype: torch.dtype | None = None

    def predict(self, x_t: Any, t: torch.Tensor, generator: torch.Generator | None = None, *,
                grad: bool = False) -> Prediction:
        """The prediction at x_t, times ``t`` ``(batch,)`` float64; ``grad``: keep autograd on through the model."""
        if self.dtype is not None and isinstance(x_t, torch.Tensor) and x_t.is_floating_point():
            x_t = x_t.to(self.dtype)
        den = self.denoiser
        if isinstance(den, Denoiser) and den.grad != grad:
            den = copy.copy(den)
            den.grad = grad
        predict = getattr(den, "predict", None)
        out = predict(x_t, t, generator) if callable(predict) else den(x_t, t, generator)
        if isinstance(out, Prediction):
            return out
        return Prediction(out, out, out)

    def output(self, x_t: Any, t: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        """The network's raw output at x_t (a :class:`udm.Denoiser`'s network, without drawing x0_hat from a
        structured q_theta), else the prediction's ``params``."""
        if isinstance(self.denoiser, Denoiser):
            with torch.set_grad_enabled(False):
                return self.denoiser.network(x_t, self.time_type.encode(t))
        return self.predict(x_t, t, generator).params

    def mean(self, x_t: Any, t: torch.Tensor, generator: torch.Generator | None = None, *,
             grad: bool = False) -> torch.Tensor:
        """q_theta's mean E[x_0 | x_t] in float64 (Gaussian families)."""
        pred = self.predict(x_t, t, generator, grad=grad)
        mean = pred.mean if pred.mean is not None else pred.x0_hat
        return mean.to(torch.float64)
