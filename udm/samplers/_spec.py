"""Named samplers: a rule function plus fixed options (presets such as ``ddim`` or ``ddpm``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..corruption import capabilities
from ..errors import CapabilityError
from ._requires import requirements_of

__all__ = ["SamplerSpec"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: registry name.
        rule: a function with the shared sampler signature
            ``(denoiser, corruption, times, x_init, *, generator, callback, clamp, **options)``. What it
            needs from a corruption is declared on the rule (:func:`udm.samplers.requires`).
        requires: extra capabilities this preset needs beyond the rule's own declaration.
        options: fixed keyword options (e.g. ``{"eta": 1.0}``); call-time options override them.
        description: one line for ``udm plugins``.
        exact_marginals: ``True`` when one step maps p(x_t | x_0) to p(x_s | x_0) exactly for any step
            size given the oracle x0_hat = x_0; ``False`` for discretised ODEs/SDEs, which are exact only
            as steps shrink (the conformance suite checks those on a fine grid).
    """

    name: str
    rule: Callable[..., Any]
    requires: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    exact_marginals: bool = True

    def required(self, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The capabilities a call with ``options`` (merged over the preset's) needs."""
        merged = {**self.options, **(options or {})}
        return tuple(dict.fromkeys((*requirements_of(self.rule).for_options(merged), *self.requires)))

    def missing(self, corruption: Any, options: Mapping[str, Any] | None = None) -> list[str]:
        """Capabilities this sampler (called with ``options``) needs that ``corruption`` lacks."""
        have = capabilities(corruption)
        return [c for c in self.required(options) if c not in have]

    def supports(self, corruption: Any, options: Mapping[str, Any] | None = None) -> bool:
        return not self.missing(corruption, options)

    def __call__(self, denoiser, corruption, times, x_init, *, generator=None, callback=None, **options):
        missing = self.missing(corruption, options)
        if missing:
            cname = getattr(corruption, "name", type(corruption).__name__)
            raise CapabilityError(
                f"sampler {self.name!r}: corruption {cname!r} must offer {', '.join(self.required(options))}; "
                f"it lacks {', '.join(missing)}."
            )
        return self.rule(denoiser, corruption, times, x_init, generator=generator, callback=callback,
                         **{**self.options, **options})
