"""Correctors: moves at a fixed time that keep p_t, run after every predictor step (docs/math.md, "The SDE view and
correctors").

A predictor (any sampler rule) carries x from t to s; a corrector then moves x at the new time s without changing
its law when the model is exact (Song et al. 2021, predictor-corrector sampling). The rules do not know about it:
:class:`~udm.samplers.Sampling` applies the corrector in :meth:`~udm.samplers.Sampling.report`, which every rule
calls at the end of each step with the new state, and writes the corrected state back into that tensor, so the
rule's next step starts from it. The model calls a corrector makes are counted in ``run.nfe`` like the rule's.

A corrector is a plugin (the ``corrector`` kind of :data:`udm.hookspecs.KINDS`); subclass :class:`Corrector` and implement :meth:`step`::

    class Shake(udm.Corrector):
        name = "shake"
        requires = ("noise_posterior", "refresh_noise")

        def step(self, run, x, where, state):
            pred = run.predict(x, where)                      # one model call at grid point `where`
            eps = run.noise(x, pred.x0_hat, where)
            return run.forward(pred.x0_hat, run.corruption.refresh_noise(eps, 0.1, run.generator), where)

A sampler is given one with ``corrector=`` (a registered name, ``{name: ..., **options}`` or an instance):
``udm.sample(..., sampler="ddim", corrector={"name": "refresh", "amount": 0.3})`` or the YAML key
``sample: {corrector: {name: refresh, amount: 0.3}}``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar

from .._schema import Interval
from ..errors import CapabilityError, ConfigError
from ._noise import per_sample_draws

__all__ = ["Corrector", "resolve_corrector", "sampling_context", "current_corrector", "DRAWS", "check_draws",
           "current_draws"]


class Corrector:
    """Base class of correctors (see the module docstring).

    Class attributes:
        name: registry name.
        requires: the capabilities a corruption must offer (``udm.capabilities``).

    Args:
        steps: corrector steps after each predictor step (score_sde's ``n_steps_each``); each makes
            :meth:`calls_per_step` model calls.
        last: run only after the last ``last`` predictor steps that land above t = 0 (where the remaining
            corruption is small; ReMDM's "loop" window in steps); ``None``: after every step but the last.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, steps: Annotated[int, Interval(ge=1)] = 1,
                 last: Annotated[int, Interval(ge=1)] | None = None) -> None:
        for key, value in (("steps", steps), ("last", last)):
            if (value is not None or key == "steps") and (isinstance(value, bool) or not isinstance(value, int)
                                                          or value < 1):
                raise ConfigError(f"corrector {self.name!r}: {key} must be an integer >= 1"
                                  f"{' or None' if key == 'last' else ''}; got {value!r}. Give the number of corrector "
                                  f"steps after each predictor step (steps) or of predictor steps followed by them "
                                  f"(last).")
        self.steps, self.last = steps, last

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, last={self.last})"

    # ---------------------------------------------------------------- contract
    def missing(self, corruption: Any) -> list[str]:
        """What ``corruption`` lacks for this corrector (empty when it is supported). Default: the capabilities
        in :attr:`requires` it does not offer."""
        from ..corruption import capabilities

        have = capabilities(corruption)
        return [c for c in self.requires if c not in have]

    def calls_per_step(self) -> int:
        """Model calls of one corrector step (default 1)."""
        return 1

    def calls(self) -> int:
        """Model calls of one application (after one predictor step): ``steps * calls_per_step()``."""
        return self.steps * self.calls_per_step()

    def applications(self, steps: int) -> int:
        """How many times it runs in a run of ``steps`` predictor steps on a grid ending at t = 0."""
        n = max(steps - 1, 0)
        return n if self.last is None else min(self.last, n)

    def applies(self, i: int, steps: int) -> bool:
        """Whether it runs after step ``i`` (0-based) of a run of ``steps`` steps (never after the last)."""
        return i < steps - 1 and (self.last is None or i >= steps - 1 - self.last)

    def start(self, run: Any) -> Any:
        """Per-run state, made once when the :class:`~udm.samplers.Sampling` run starts (default ``None``)."""
        return None

    def correct(self, run: Any, x: Any, where: int, pred: Any, state: Any) -> Any:
        """``steps`` corrector steps at grid point ``where`` (the time the predictor just reached); ``pred`` is the
        prediction the predictor step used (at the previous grid point). Returns the corrected state."""
        for _ in range(self.steps):
            x = self.step(run, x, where, state)
        return x

    def step(self, run: Any, x: Any, where: int, state: Any) -> Any:
        """One corrector step at grid point ``where``: a move of x that leaves p_t invariant (exactly or as its
        step size shrinks) when the model is exact."""
        raise NotImplementedError(f"corrector {self.name!r}: step must be implemented by the subclass.")


# ------------------------------------------------------------------------------- resolution
def resolve_corrector(spec: Any, corruption: Any, registry: Any = None, *, where: str = "udm.sample") -> Corrector | None:
    """The corrector ``spec`` names (``None``, a registered name, ``{name: ..., **options}`` or an instance), checked
    against ``corruption``: a clear :class:`~udm.CapabilityError` naming the correctors it supports otherwise.
    ``where`` starts every message (the caller: ``udm.sample``, ``exp.yaml: sample``)."""
    if spec is None:
        return None
    from ..plugin_spec import build_plugin

    corrector = build_plugin("corrector", spec, where=where, registry=registry)
    if not callable(getattr(corrector, "correct", None)) or not callable(getattr(corrector, "missing", None)):
        raise ConfigError(f"{where}: corrector must be a registered corrector's name, a mapping {{name: ..., "
                          f"<options>}} or a udm.Corrector; got {type(corrector).__name__}. E.g. corrector='refresh'.")
    missing = corrector.missing(corruption)
    if missing:
        from ..corruption import lacks

        cname = getattr(corruption, "name", type(corruption).__name__)
        raise CapabilityError(
            f"{where}: corrector {corrector.name!r}: {lacks(corruption, missing, missing)}. Correctors corruption "
            f"{cname!r} supports: {', '.join(supported_correctors(corruption, registry))}.")
    return corrector


def supported_correctors(corruption: Any, registry: Any = None) -> list[str]:
    """The registered correctors (built with their defaults) that ``corruption`` supports."""
    from .._registry import registry as default_registry

    reg = registry or default_registry()
    out = []
    for name in reg.names("corrector"):
        try:
            ok = not reg.create("corrector", name).missing(corruption)
        except Exception:  # a corrector that needs options to be built: list it only when it says it fits
            ok = False
        if ok:
            out.append(name)
    return out or ["(none)"]


# ---------------------------------------------------------------------------- the context
_CORRECTOR: contextvars.ContextVar[Corrector | None] = contextvars.ContextVar("udm_corrector", default=None)


def current_corrector() -> Corrector | None:
    """The corrector of the sampler call in progress (what a new :class:`~udm.samplers.Sampling` applies)."""
    return _CORRECTOR.get()


_DRAWS: contextvars.ContextVar[str] = contextvars.ContextVar("udm_draws", default="steps")


def current_draws() -> str:
    """Where the sampler call in progress uses q_theta's draws (``steps``, ``last`` or ``all``; see
    :data:`DRAWS`)."""
    return _DRAWS.get()


#: the sampler option ``draws``: where a q_theta with a variance is drawn from (docs/math.md, "The last step")
DRAWS = {
    "steps": "a draw on every step but the last, which returns the mean (DDPM, Analytic-DPM; the default)",
    "last": "the mean on every step, a draw on the last (a deterministic solver whose last step samples)",
    "all": "a draw on every step, the last included (ancestral sampling to the end)",
}


def check_draws(draws: Any, where: str) -> str | None:
    """``draws`` if it is ``None`` (the enclosing call's, ``steps`` at the top) or one of :data:`DRAWS`, else a
    ConfigError naming ``where``."""
    if draws is not None and (not isinstance(draws, str) or draws not in DRAWS):
        raise ConfigError(f"{where}: draws must be one of {', '.join(repr(k) for k in DRAWS)} (where q_theta's "
                          f"variance is drawn from); got {draws!r}. Use draws='last' for a deterministic solver whose "
                          f"last step samples.")
    return draws


@contextmanager
def sampling_context(generator: Any = None, corrector: Corrector | None = None,
                     draws: str | None = None) -> Iterator[None]:
    """Within the block, a new :class:`~udm.samplers.Sampling` run applies ``corrector`` and uses q_theta's draws
    where ``draws`` says (each when given; else the enclosing call's), and draws with a
    :class:`~udm.samplers.PerSampleGenerator` are split per sample. Entered by every sampler call."""
    token = _CORRECTOR.set(corrector) if corrector is not None else None
    token_draws = _DRAWS.set(draws) if draws is not None else None
    try:
        with per_sample_draws(generator):
            yield
    finally:
        if token_draws is not None:
            _DRAWS.reset(token_draws)
        if token is not None:
            _CORRECTOR.reset(token)

