"""Every udm hook specification, in one module, generated from one table of plugin kinds.

A plugin is a module (or object) with functions marked ``@udm.hookimpl`` whose names are the hooks
below. Each hook receives a ``register`` callable; call it once per object you contribute::

    import udm

    @udm.hookimpl
    def udm_register_corruptions(register):
        register(Blur)                 # name taken from ``Blur.name``

``register(obj, name=None)`` uses ``name`` if given, else ``obj.name``, else ``obj.__name__``.
Plugins are found through entry points in the group ``udm`` (see :mod:`udm._registry`).

:data:`KINDS` is the single table every other module reads: the hook of each kind, the YAML section
that names it, the contract the registry checks on ``register()``, and the keywords the runner fills
in from the data. Adding a kind is adding one :class:`PluginKind` entry; its hookspec
``udm_register_<plural>(register)`` is generated from the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT", "PluginKind", "KINDS", "kind_of_hook", "kind_of_section"]

PROJECT = "udm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def _same(obj: Any) -> Any:
    return obj


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin and everything udm does with it.

    Attributes:
        name: the kind, as in ``registry.get(name, ...)`` (``"corruption"``).
        hook: the hook that registers it (``"udm_register_corruptions"``); its hookspec is generated.
        doc: the hook's docstring: what ``register`` takes.
        section: the YAML section that names one of these (``{name: <registered>, **keywords}``), or
            ``None`` when the kind is configured elsewhere (samplers in ``sample``, metrics in ``eval``,
            or a kind nested inside another plugin's keywords).
        section_required: an experiment must have that section.
        required: members the registered object must have (checked on ``register()``).
        signatures: method -> positional parameters it must accept (checked on ``register()`` for
            the methods the object has, required or optional).
        must_be_callable: the registered object itself must be callable (factories, functions).
        factory: ``registry.create(kind, name, **kw)`` calls it to build an instance.
        injected: keywords the runner fills in from the data when the signature takes them and the
            config does not give them (``data_shape``, ``vocab_size``).
        supplied: parameters udm passes itself when calling it; never config keys.
        options: the callable whose keyword parameters are the config keys (default: the object).
    """

    name: str
    hook: str
    doc: str
    section: str | None = None
    section_required: bool = True
    required: tuple[str, ...] = ()
    signatures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    must_be_callable: bool = False
    factory: bool = True
    injected: tuple[str, ...] = ()
    supplied: tuple[str, ...] = ()
    options: Callable[[Any], Any] = _same


_KINDS = (
    PluginKind(
        "corruption", "udm_register_corruptions",
        "Register forward corruptions: subclasses of :class:`udm.Corruption` (or objects honouring it).",
        section="corruption", required=("sample_noise", "forward", "sample_prior"),
        signatures={"sample_noise": ("x0", "generator"), "forward": ("x0", "eps", "t"),
                    "sample_prior": ("shape", "generator"), "noise_posterior": ("x_t", "x0", "t", "generator"),
                    "refresh_noise": ("eps", "amount", "generator"),
                    "posterior": ("x_t", "x0", "t", "s", "generator")},
        injected=("vocab_size",)),
    PluginKind(
        "schedule", "udm_register_schedules",
        "Register noise schedules: subclasses of :class:`udm.Schedule` (alpha_t, sigma_t of a Gaussian "
        "corruption), named inside a corruption's keywords (``schedule: cosine``).",
        section=None, required=("amplitudes",), signatures={"amplitudes": ("t",)}),
    PluginKind(
        "time", "udm_register_time_types", "Register time types: subclasses of :class:`udm.TimeType`.",
        section="time", required=("sample_train", "grid", "encode"),
        signatures={"sample_train": ("batch", "generator"), "grid": ("steps",), "encode": ("t",)}),
    PluginKind(
        "sampler", "udm_register_samplers",
        "Register samplers: :class:`udm.SamplerSpec` instances (a rule function plus fixed options).",
        required=("rule", "supports"), factory=False,
        supplied=("denoiser", "corruption", "times", "x_init", "generator", "callback", "clamp"),
        options=lambda spec: spec.rule),
    PluginKind(
        "corrector", "udm_register_correctors",
        "Register correctors: subclasses of :class:`udm.Corrector` (moves at a fixed time that keep p_t, run after "
        "every predictor step), named in the ``sample`` section's ``corrector`` key.",
        section=None, required=("correct", "missing", "calls"),
        signatures={"correct": ("run", "x", "where", "pred", "state"), "missing": ("corruption",)}),
    PluginKind(
        "model", "udm_register_models", "Register model factories: callables ``(**kwargs) -> torch.nn.Module``.",
        section="model", must_be_callable=True, injected=("data_shape", "vocab_size")),
    PluginKind(
        "dataset", "udm_register_datasets",
        "Register dataset factories: callables ``(**kwargs, seed) -> torch.Tensor`` of shape ``(n, ...)``.",
        section="data", must_be_callable=True),
    PluginKind(
        "metric", "udm_register_metrics",
        "Register metrics: callables ``(samples, reference, *, generator=None, **kwargs) -> float``.",
        must_be_callable=True, factory=False, supplied=("samples", "reference", "generator")),
    PluginKind(
        "estimator", "udm_register_estimators",
        "Register likelihood estimators: :class:`udm.EstimatorSpec` instances (an estimate function and what it "
        "needs from a corruption), configured in ``eval: {nll: {estimator: ...}}``.",
        required=("estimate", "supports"), factory=False, supplied=("ctx", "x0", "generator"),
        options=lambda spec: spec.estimate),
)

_BY_NAME = {k.name: k for k in _KINDS}
#: kind name -> :class:`PluginKind`, in the order ``udm plugins`` shows them (read-only; every module reads
#: it when it needs it, never copies it at import)
KINDS: Mapping[str, PluginKind] = MappingProxyType(_BY_NAME)


def kind_of_hook(hook: str) -> PluginKind | None:
    """The kind a hook registers, or ``None`` for a name that is not a udm hook."""
    return next((k for k in KINDS.values() if k.hook == hook), None)


def kind_of_section(section: str) -> PluginKind | None:
    """The kind a top-level YAML section names, or ``None``."""
    return next((k for k in KINDS.values() if k.section == section), None)


def _hookspec(kind: PluginKind) -> Callable[..., None]:
    def spec(register):  # the signature every hook shares
        pass

    spec.__name__ = spec.__qualname__ = kind.hook
    spec.__doc__ = kind.doc
    spec.__module__ = __name__
    return hookspec(spec)


globals().update({k.hook: _hookspec(k) for k in KINDS.values()})
