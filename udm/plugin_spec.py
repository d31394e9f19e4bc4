"""Plugins inside plugins: a keyword argument that names another plugin (a schedule, a corruption, ...).

Annotate such an argument ``udm.PluginSpec["schedule"]``; the value may be the plugin's name, a mapping
``{name: ..., **options}`` (exactly a YAML section) or an already-built instance. :func:`build_plugin`
turns any of them into the instance, and the config checker validates the nested mapping's keys against
that plugin's own signature, with the full key path (``corruption.schedule.beta_end``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from .errors import ConfigError, UdmError

__all__ = ["PluginSpec", "PluginRef", "build_plugin", "plugin_ref"]


@dataclass(frozen=True)
class PluginRef:
    """``Annotated`` metadata marking an argument as a reference to a plugin of ``kind``."""

    kind: str


class _PluginSpec:
    """``PluginSpec[kind]`` is ``Annotated[str | Mapping | Any, PluginRef(kind)]``."""

    def __getitem__(self, kind: str) -> Any:
        return Annotated[str | Mapping[str, Any] | Any, PluginRef(kind)]


PluginSpec = _PluginSpec()


def plugin_ref(annotation: Any) -> PluginRef | None:
    """The :class:`PluginRef` in an annotation (``PluginSpec[kind]``, possibly ``| None``), or ``None``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, PluginRef):
            return meta
    for arg in getattr(annotation, "__args__", ()) or ():
        ref = plugin_ref(arg)
        if ref is not None:
            return ref
    return None


def build_plugin(kind: str, spec: Any, *, where: str, registry: Any = None) -> Any:
    """The ``kind`` plugin described by ``spec`` (a name, ``{name: ..., **options}``, or an instance).

    Names are looked up in ``registry`` (default: the installed plugins); errors name ``where``.
    """
    if isinstance(spec, str) or isinstance(spec, Mapping):
        from ._registry import registry as default_registry

        reg = registry or default_registry()
        if isinstance(spec, str):
            name, options = spec, {}
        else:
            name = spec.get("name")
            if not isinstance(name, str):
                raise ConfigError(f"{where}: a {kind} given as a mapping must have a `name` key naming a registered "
                                  f"{kind}; got {dict(spec)!r}. E.g. {{name: ..., <options>}}.")
            options = {k: v for k, v in spec.items() if k != "name"}
        try:
            return reg.create(kind, name, **options)
        except UdmError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    return spec
