"""Named samplers: a rule function plus fixed options (presets such as ``ddim`` or ``ddpm``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..corruption import capabilities
from ..errors import CapabilityError

__all__ = ["SamplerSpec"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: registry name.
        rule: a function with the shared sampler signature
            ``(denoiser, corruption, times, x_init, *, generator, callback, clamp, **options)``.
        requires: capabilities the corruption must offer (see :func:`udm.capabilities`).
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

    def missing(self, corruption: Any) -> list[str]:
        """Capabilities this sampler needs that ``corruption`` lacks."""
        have = capabilities(corruption)
        return [c for c in self.requires if c not in have]

    def supports(self, corruption: Any) -> bool:
        return not self.missing(corruption)

    def __call__(self, denoiser, corruption, times, x_init, *, generator=None, callback=None, **options):
        missing = self.missing(corruption)
        if missing:
            cname = getattr(corruption, "name", type(corruption).__name__)
            raise CapabilityError(
                f"sampler {self.name!r}: corruption {cname!r} must offer {', '.join(self.requires)}; "
                f"it lacks {', '.join(missing)}."
            )
        return self.rule(denoiser, corruption, times, x_init, generator=generator, callback=callback,
                         **{**self.options, **options})
