"""What a rule needs from a corruption, and how many model calls it makes a step, declared once next to the
rule and allowed to depend on its options."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["Requirements", "requires", "requirements_of", "calls_per_step", "calls_per_step_of", "chooses_own_steps"]


@dataclass(frozen=True)
class Requirements:
    """``always``: capabilities every call needs; ``when``: option name -> extra capabilities needed when
    that option is given (not ``None``), e.g. ``refresh`` needs a linear-Gaussian layer only with ``eta``."""

    always: tuple[str, ...] = ()
    when: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def for_options(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        extra = [c for opt, caps in self.when.items() if options.get(opt) is not None for c in caps]
        return tuple(dict.fromkeys((*self.always, *extra)))


def requires(*always: str, **when: tuple[str, ...] | str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator declaring a rule's requirements: ``@requires("noise_posterior", eta=("linear_gaussian",))``.

    The decorated rule checks them on every call (a clear :class:`~udm.CapabilityError` naming what the
    corruption lacks) and carries them as ``rule.requirements`` for :class:`~udm.SamplerSpec` and
    ``udm plugins``. It also takes ``corrector=`` (a :class:`~udm.samplers.Corrector`, or a registered name or
    mapping) and ``draws=`` (where q_theta's draws are used, :data:`udm.samplers.DRAWS`) and runs the rule inside :func:`~udm.samplers.sampling_context`: the rule's
    :class:`~udm.samplers.Sampling` applies the corrector, and a :class:`~udm.samplers.PerSampleGenerator` draws
    per sample.
    """
    norm = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in when.items()}
    req = Requirements(tuple(always), norm)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def rule(denoiser, corruption, times, x_init, *, corrector=None, draws=None, **options):
            from ._correct import check_draws, resolve_corrector, sampling_context
            from ._loop import require

            require(corruption, fn.__name__, *req.for_options(options))
            fixer = resolve_corrector(corrector, corruption, where=f"sampler rule {fn.__name__!r}")
            check_draws(draws, f"sampler rule {fn.__name__!r}")
            with sampling_context(options.get("generator"), fixer, draws):
                return fn(denoiser, corruption, times, x_init, **options)

        rule.requirements = req  # type: ignore[attr-defined]
        return rule

    return deco


def requirements_of(rule: Callable[..., Any]) -> Requirements:
    """The requirements a rule declared (none if it declared nothing)."""
    return getattr(rule, "requirements", Requirements())


def calls_per_step(count: int | Callable[[Mapping[str, Any]], int] | None, *,
                   last: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator declaring how many model calls a rule makes on each step but the last (``count``: a number,
    or a function of the call's options: the rule's defaults, then the preset's, then the caller's) and on
    the last step to t = 0 (``last``; rules that return x0_hat there make one), e.g.
    ``@calls_per_step(lambda options: {"euler": 1, "heun": 2}[options["solver"]])``. Undeclared rules make
    one call a step. :meth:`~udm.SamplerSpec.calls` turns it into a budget. ``None``: the rule chooses its
    steps itself (error control), so no grid fixes its calls and it takes no budget ``nfe``."""

    def deco(rule: Callable[..., Any]) -> Callable[..., Any]:
        rule.calls_per_step = count  # type: ignore[attr-defined]
        rule.calls_on_last_step = int(last)  # type: ignore[attr-defined]
        return rule

    return deco


def calls_per_step_of(rule: Callable[..., Any], options: Mapping[str, Any]) -> tuple[int, int]:
    """(calls on each step but the last, calls on the last) that ``rule`` declared, for ``options`` (merged over
    the rule's defaults)."""
    count, last = getattr(rule, "calls_per_step", 1), getattr(rule, "calls_on_last_step", 1)
    if count is None:
        raise ConfigError(f"sampler rule {rule.__name__!r}: a budget of model calls (nfe) must be asked only of a "
                          f"rule whose steps are the grid's; got a rule that chooses its own steps (error control). "
                          f"Give steps, and bound its calls with its own options (e.g. rtol, atol, max_calls).")
    if not callable(count):
        return int(count), last
    params = inspect.signature(rule).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    return int(count({**defaults, **options})), last


def chooses_own_steps(rule: Callable[..., Any]) -> bool:
    """Whether ``rule`` declared ``@calls_per_step(None)``: it picks its steps itself, so no grid fixes its calls."""
    return hasattr(rule, "calls_per_step") and rule.calls_per_step is None  # type: ignore[attr-defined]
