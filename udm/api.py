"""The high-level Python API: sample from a trained network by sampler *name*."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _validate
from ._registry import Registry, registry as default_registry
from .denoiser import Denoiser
from .errors import CapabilityError
from .samplers import SamplerSpec, SamplerStep

__all__ = ["sample", "supported_samplers", "resolve_sampler"]


def supported_samplers(corruption: Any, registry: Registry | None = None) -> list[str]:
    """Names of the registered samplers whose required capabilities ``corruption`` offers."""
    reg = registry or default_registry()
    return [n for n in reg.names("sampler") if reg.supports(n, corruption)]


def resolve_sampler(name: str | SamplerSpec, corruption: Any, registry: Registry | None = None) -> SamplerSpec:
    """The :class:`SamplerSpec` called ``name``; a clear error if the corruption cannot support it."""
    if isinstance(name, SamplerSpec):
        spec = name
        reg = registry
    else:
        reg = registry or default_registry()
        spec = reg.get("sampler", name)
    missing = spec.missing(corruption)
    if missing:
        cname = getattr(corruption, "name", type(corruption).__name__)
        ok = ", ".join(supported_samplers(corruption, reg)) if reg is not None else "(no registry given)"
        raise CapabilityError(
            f"sampler {spec.name!r}: corruption {cname!r} must offer {', '.join(spec.requires)}; it lacks "
            f"{', '.join(missing)}. Samplers {cname!r} supports: {ok}."
        )
    return spec


def sample(model: torch.nn.Module | Callable[..., Any], corruption: Any, time_type: Any, *, shape: tuple[int, ...],
           sampler: str | SamplerSpec = "invert", steps: int = 50, spacing: str = "uniform",
           generator: torch.Generator | None = None, registry: Registry | None = None,
           callback: Callable[[SamplerStep], Any] | None = None, clamp: bool = False,
           family_options: dict[str, Any] | None = None, **options: Any) -> Any:
    """Draw ``shape[0]`` samples: prior x_1, then ``steps`` reverse steps of ``sampler`` on the time grid.

    Args:
        model: a trained network (wrapped in :class:`Denoiser`) or a denoiser ``(x_t, t, g) -> x0_hat``.
        shape: ``(n, *data_shape)`` for the prior.
        sampler: a registered sampler name (``invert``, ``ddim``, ``ddpm``, ``heun``, ...) or a spec.
        steps, spacing: the time type's sampling grid.
        options: sampler options (``eta``, ``solver``, ...).
    Returns:
        x0 samples of ``shape``.
    """
    _validate.check_sample_args(model, corruption, time_type, shape=shape, sampler=sampler, steps=steps, spacing=spacing,
                                generator=generator, family_options=family_options, options=options, registry=registry)
    spec = resolve_sampler(sampler, corruption, registry)
    if isinstance(model, torch.nn.Module):
        device = next(model.parameters()).device
        model = Denoiser(model.eval(), corruption, time_type, **(family_options or {}))
    else:
        device = generator.device if generator is not None else torch.device("cpu")
    times = time_type.grid(steps, spacing=spacing, corruption=corruption)
    x_init = corruption.sample_prior(tuple(shape), generator, device=device)
    return spec(model, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp, **options)
