"""What ``udm plugins`` shows: every plugin and, per corruption, the samplers and loss it supports.

::

    report = build_report(udm.load_registry())
    print(report.to_text())          # for people
    report.to_json()                 # for machines: {"settings": ..., "plugins": [...], "corruptions": [...]}

Per plugin: entry point, distribution, version, status (``loaded`` / ``failed``), the error when it
failed, and what it registered (kind -> names). Per corruption: the plugin that provides it, its
q_theta family and the loss that family fixes, the optional capabilities it offers (discovered from an
instance built with default arguments (plus ``vocab_size`` for token corruptions), as :func:`udm.capabilities` does) and the samplers those unlock
(:func:`udm.supported_samplers`). A corruption that cannot be built without arguments is listed with the
reason instead of its samplers. Also reports the ``UDM_*`` plugin switches in effect.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._registry import PluginInfo, Registry
from .corruption import capabilities
from .errors import PluginError

__all__ = ["PluginEntry", "CorruptionEntry", "PluginReport", "build_report", "main", "ENV_SWITCHES", "LOSS_OF_FAMILY"]

#: the environment switches :func:`udm.load_registry` reads
ENV_SWITCHES = ("UDM_DISABLE_PLUGIN_AUTOLOAD", "UDM_PLUGINS", "UDM_BLOCK_PLUGINS", "UDM_STRICT_PLUGINS")
#: the per-sample loss each q_theta family fixes (udm.families)
#: the vocabulary size used to build token corruptions that require one (capabilities do not depend on it)
PROBE_VOCAB = 16
LOSS_OF_FAMILY = {"gaussian": "squared error", "laplace": "absolute error (L1)", "categorical": "cross-entropy"}


@dataclass
class PluginEntry:
    """One entry point as loaded."""

    name: str
    distribution: str
    version: str
    value: str
    status: str  #: ``loaded`` or ``failed``
    error: str | None
    registered: dict[str, list[str]] = field(default_factory=dict)  #: kind -> names


@dataclass
class CorruptionEntry:
    """One registered corruption and what udm derives for it."""

    name: str
    distribution: str  #: the distribution that registered it
    family: str | None  #: the q_theta family (``gaussian``, ``laplace``, ``categorical``)
    loss: str | None  #: the loss the family fixes, or ``"nll (own)"`` for a corruption with ``nll``
    prediction: str | None  #: the network's target (``x0``, ``eps``, ``v``) when the corruption names one
    capabilities: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    note: str | None = None  #: why samplers are unknown (the corruption needs arguments)


@dataclass
class PluginReport:
    plugins: list[PluginEntry]
    corruptions: list[CorruptionEntry]
    settings: dict[str, str | None]  #: the UDM_* switches as set in the environment

    @property
    def failed(self) -> list[PluginEntry]:
        return [p for p in self.plugins if p.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        lines = [f"{len(self.plugins)} plugin(s), {len(self.failed)} failed"]
        set_ = {k: v for k, v in self.settings.items() if v is not None}
        if set_:
            lines.append("switches: " + ", ".join(f"{k}={v}" for k, v in set_.items()))
        for p in self.plugins:
            version = f" {p.version}" if p.version else ""
            lines.append(f"{p.distribution}{version} [{p.name}] {p.status}" + (f": {p.error}" if p.error else ""))
            for kind, names in p.registered.items():
                lines.append(f"    {kind}: {', '.join(names)}")
        for c in self.corruptions:
            loss = f"{c.family} -> {c.loss}" + (f" (predicts {c.prediction})" if c.prediction else "")
            if c.note:
                lines.append(f"corruption {c.name!r} supports samplers: unknown ({c.note})")
            else:
                lines.append(f"corruption {c.name!r} supports samplers: {', '.join(c.samplers) or '(none)'}")
            caps = ", ".join(c.capabilities) or "(required set only)"
            lines.append(f"    from {c.distribution}; loss: {loss}; capabilities: {caps}")
        return "\n".join(lines)


def _plugin(info: PluginInfo) -> PluginEntry:
    return PluginEntry(info.name, info.distribution, info.version, info.value, info.status, info.error,
                       {k: list(v) for k, v in info.registered.items()})


def _loss(family: Any, corruption: Any) -> str | None:
    if callable(getattr(corruption, "nll", None)):
        return "nll (own)"
    return LOSS_OF_FAMILY.get(family) if isinstance(family, str) else None


def _probe_kwargs(factory: Any) -> dict[str, Any]:
    """``vocab_size`` (which the runner fills in from the data) when the class requires it; else nothing."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    p = params.get("vocab_size")
    return {"vocab_size": PROBE_VOCAB} if p is not None and p.default is p.empty else {}


def _corruption(registry: Registry, name: str) -> CorruptionEntry:
    from .api import supported_samplers

    factory = registry.get("corruption", name)
    dist = registry.provider("corruption", name).distribution
    try:
        obj = factory(**_probe_kwargs(factory)) if isinstance(factory, type) else factory
    except Exception as exc:  # needs arguments: capabilities belong to a configured instance
        family = getattr(factory, "family", None)
        return CorruptionEntry(name, dist, family, _loss(family, factory), None,
                               note=f"needs arguments to build: {type(exc).__name__}: {exc}")
    try:
        family = getattr(obj, "family", None)
        prediction = getattr(obj, "prediction", None)
        caps = sorted(capabilities(obj))
    except Exception as exc:  # a raising property: report it, keep listing the others
        return CorruptionEntry(name, dist, None, None, None, note=f"its capabilities could not be read "
                               f"({type(exc).__name__}: {exc}); the fault is in {dist}")
    try:
        samplers = supported_samplers(obj, registry)
    except PluginError as exc:  # a raising supports(): named by the registry
        return CorruptionEntry(name, dist, family, _loss(family, obj), None, caps, note=str(exc))
    return CorruptionEntry(name, dist, family, _loss(family, obj), prediction if isinstance(prediction, str) else None,
                           caps, samplers)


def build_report(registry: Registry) -> PluginReport:
    """The report of ``registry`` (see the module docstring)."""
    return PluginReport(
        plugins=[_plugin(p) for p in registry.plugins],
        corruptions=[_corruption(registry, n) for n in registry.names("corruption")],
        settings={k: os.environ.get(k) for k in ENV_SWITCHES},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``udm plugins [--json]`` on a fresh registry; returns the exit code (2 when strict mode fails)."""
    from contextlib import redirect_stdout

    from ._registry import load_registry

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with redirect_stdout(sys.stderr):  # what plugins print never mixes with the report
            report = build_report(load_registry())
    except PluginError as exc:
        print(f"udm plugins: plugin error: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if "--json" in args else report.to_text())
    return 0
