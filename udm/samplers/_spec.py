"""Named samplers: a rule function plus fixed options (presets such as ``ddim`` or ``ddpm``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..corruption import capabilities, lacks
from ..errors import CapabilityError, ConfigError
from ._requires import calls_per_step_of, chooses_own_steps, requirements_of

__all__ = ["SamplerSpec"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler.

    Attributes:
        name: registry name.
        rule: a function with the shared sampler signature
            ``(denoiser, corruption, times, x_init, *, generator, callback, clamp, **options)``. What it
            needs from a corruption is declared on the rule (:func:`udm.samplers.requires`), and so are its
            model calls per step (:func:`udm.samplers.calls_per_step`; one if undeclared).
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

    def calls(self, steps: int, options: Mapping[str, Any] | None = None, corrector: Any = None) -> int:
        """The model calls of ``steps`` steps on a grid that ends at t = 0 (a time type's grid): c (steps - 1) + l
        with c the rule's calls per step and l those of the last step, which returns x0_hat (l = 1 for the
        built-ins: Heun 2 steps - 1, RK4 4 steps - 3), plus the ``corrector``'s (a :class:`~udm.samplers.Corrector`:
        its calls times the steps it follows). An upper bound: steps that change nothing may cost none
        (``SamplerStep.reused``)."""
        per, last = self.per_step(options)
        extra = corrector.calls() * corrector.applications(steps) if corrector is not None else 0
        return per * (steps - 1) + last + extra

    def per_step(self, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """(model calls on each step but the last, on the last step) for a call with ``options``."""
        if chooses_own_steps(self.rule):
            raise ConfigError(f"sampler {self.name!r}: a budget of model calls (nfe) must be asked only of a sampler "
                              f"that steps on the grid; got {self.name!r}, which chooses its own steps (error "
                              f"control). Give steps, and bound its calls with its options (rtol, atol, max_calls).")
        return calls_per_step_of(self.rule, {**self.options, **(options or {})})

    def steps_for(self, nfe: int, options: Mapping[str, Any] | None = None, corrector: Any = None) -> int:
        """The most steps whose :meth:`calls` (the ``corrector``'s included) fit a budget of ``nfe`` model calls."""
        per, last = self.per_step(options)
        if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < last:
            raise ConfigError(f"sampler {self.name!r}: nfe must be an integer >= {last} (a budget of model calls; one "
                              f"step costs {last}); got {nfe!r}. Give the number of network evaluations to spend.")
        steps = (nfe - last) // per + 1
        while corrector is not None and steps > 1 and self.calls(steps, options, corrector) > nfe:
            steps -= 1
        return steps

    def missing(self, corruption: Any, options: Mapping[str, Any] | None = None) -> list[str]:
        """Capabilities this sampler (called with ``options``) needs that ``corruption`` lacks."""
        have = capabilities(corruption)
        return [c for c in self.required(options) if c not in have]

    def supports(self, corruption: Any, options: Mapping[str, Any] | None = None) -> bool:
        return not self.missing(corruption, options)

    def __call__(self, denoiser, corruption, times, x_init, *, generator=None, callback=None, corrector=None,
                 draws=None, **options):
        """Run the rule with the preset's options under ``options``; ``corrector`` (a :class:`~udm.samplers.Corrector`,
        a registered name or ``{name: ..., **options}``) runs after every step but the last; ``draws`` says where a
        q_theta with a variance is drawn from (``steps``: every step but the last, the default; ``last``: only the
        last step, the others step with its mean; ``all``: every step; docs/math.md, "The last step"; ``None``:
        the enclosing call's)."""
        from ._correct import check_draws, resolve_corrector, sampling_context

        missing = self.missing(corruption, options)
        if missing:
            raise CapabilityError(f"sampler {self.name!r}: {lacks(corruption, self.required(options), missing)}.")
        fixer = resolve_corrector(corrector, corruption, where=f"sampler {self.name!r}")
        check_draws(draws, f"sampler {self.name!r}")
        with sampling_context(generator, fixer, draws):
            return self.rule(denoiser, corruption, times, x_init, generator=generator, callback=callback,
                             **{**self.options, **options})
