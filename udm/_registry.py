"""The plugin registry: entry points in the group ``udm`` -> named corruptions, samplers, ...

Built-ins and third-party packages take the same path: each entry point names a module holding
``@udm.hookimpl`` functions. Loading is one plugin at a time, so a broken plugin (import error,
misspelled hook, a hook that raises, a duplicate name) is recorded in :attr:`Registry.plugins`
and isolated; everything else keeps working. Nothing is loaded at import time: call
:func:`load_registry` (fresh) or :func:`registry` (cached default).

Environment switches (read by :func:`load_registry` when the argument is not given):

``UDM_DISABLE_PLUGIN_AUTOLOAD=1``  load no entry point at all (only plugins passed explicitly)
``UDM_PLUGINS=a,b``                load only these entry points / distributions
``UDM_BLOCK_PLUGINS=a,b``          never load these entry points / distributions
``UDM_STRICT_PLUGINS=1``           any plugin failure raises :class:`~udm.errors.PluginError`
"""

from __future__ import annotations

import importlib.metadata as metadata
import inspect
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import _validate, hookspecs
from .errors import ConfigError, PluginError, UdmWarning, UnknownPluginError, did_you_mean

__all__ = ["PluginInfo", "Registry", "load_registry", "registry", "list_plugins"]

GROUP = "udm"


@dataclass
class PluginInfo:
    """One plugin (entry point) as loaded: where it came from, what it registered, whether it failed."""

    name: str  #: entry-point name (or the name given to :meth:`Registry.add_plugin`)
    distribution: str  #: the distribution that declared it
    version: str  #: the distribution's version
    value: str = ""  #: the entry point's target, ``module[:attr]``
    status: str = "loaded"  #: ``"loaded"`` or ``"failed"``
    error: str | None = None  #: why it failed
    registered: dict[str, list[str]] = field(default_factory=dict)  #: kind -> names

    @property
    def label(self) -> str:
        """``"dist 1.0 (entry point name)"``, the way errors name a plugin."""
        version = f" {self.version}" if self.version else ""
        return f"{self.distribution}{version} (entry point {self.name!r})"


@dataclass
class _Entry:
    obj: Any
    plugin: PluginInfo


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Named plugin objects of every kind (``corruption``, ``time``, ``sampler``, ``model``,
    ``dataset``, ``metric``), with the :class:`PluginInfo` of every plugin that was loaded."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.plugins: list[PluginInfo] = []
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._table: dict[str, dict[str, _Entry]] = {k: {} for k in hookspecs.KINDS}
        #: the plugin switches this registry was loaded with (named in "not found" errors)
        self.settings: dict[str, str] = {}
        self._conflicts: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self._kind(kind))

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name`` for ``kind``; clear errors for unknown or conflicting names."""
        table = self._kind(kind)
        if (kind, name) in self._conflicts:
            raise PluginError(self._conflicts[(kind, name)])
        if name not in table:
            available = ", ".join(sorted(table)) or "(none)"
            failed = [p for p in self.plugins if p.status == "failed"]
            note = ""
            if failed:
                note = " Plugins that failed to load (run `udm plugins`): " + "; ".join(
                    f"{p.label}: {p.error}" for p in failed
                ) + "."
            raise UnknownPluginError(
                f"{kind} {name!r}: name must be a registered {kind}; got {name!r}. "
                f"Available: {available}.{did_you_mean(name, table)}{note}{self._switch_note()}"
            )
        return table[name].obj

    def _switch_note(self) -> str:
        """What the plugin switches in effect hid, for "not found" errors."""
        if not self.settings:
            return ""
        set_ = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (f" Plugin loading was restricted by {set_}; unset {'it' if len(self.settings) == 1 else 'them'} "
                f"to load every installed plugin.")

    def supports(self, sampler: str, corruption: Any) -> bool:
        """Whether the sampler ``sampler`` can run on ``corruption``; a plugin failing to answer (a raising
        ``supports()`` or capability property) is a :class:`PluginError` naming its distribution."""
        spec = self.get("sampler", sampler)
        try:
            return bool(spec.supports(corruption))
        except Exception as exc:  # the sampler's or the corruption's plugin code
            cname = getattr(type(corruption), "name", type(corruption).__name__)
            providers = [self.provider("sampler", sampler).label]
            if isinstance(cname, str) and cname in self._table["corruption"]:
                providers.append(self.provider("corruption", cname).label)
            raise PluginError(f"sampler {sampler!r}: supports(corruption {cname!r}) must answer; got "
                              f"{type(exc).__name__}: {exc}. The fault is in {' or '.join(providers)}: fix or "
                              f"block it with UDM_BLOCK_PLUGINS.") from None

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registered ``name``."""
        self.get(kind, name)
        return self._table[kind][name].plugin

    def create(self, kind: str, name: str, /, **kwargs: Any) -> Any:
        """Call the registered factory (class or function) ``name`` with ``kwargs``."""
        factory = self.get(kind, name)
        if not hookspecs.KINDS[kind].factory:
            raise PluginError(f"{kind} {name!r}: create() must be used for factories; got a {kind}, which is not "
                              f"built from keywords. Use registry.get({kind!r}, {name!r}) and call it.")
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError):  # builtins without a signature: let the call report
            return factory(**kwargs)
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            valid = [p.name for p in sig.parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = [k for k in kwargs if k not in valid]
            hint = did_you_mean(unknown[0], valid) if unknown else ""
            raise ConfigError(f"{kind} {name!r}: keyword arguments must match its signature {sig}; got {exc}. "
                              f"Valid keys: {', '.join(valid) or '(none)'}.{hint}") from None
        _validate.check_factory_kwargs(f"{kind} {name!r}", factory, kwargs)
        return factory(**kwargs)

    def _kind(self, kind: str) -> dict[str, _Entry]:
        if kind not in self._table:
            raise UnknownPluginError(
                f"registry: kind must be one of {', '.join(hookspecs.KINDS)}; got {kind!r}."
                f"{did_you_mean(kind, hookspecs.KINDS)}"
            )
        return self._table[kind]

    # ----------------------------------------------------------------- loading
    def add_plugin(self, plugin: Any, *, name: str, distribution: str = "<local>", version: str = "",
                   value: str = "") -> PluginInfo:
        """Register an already-imported plugin module/object (what entry-point loading does per plugin)."""
        info = PluginInfo(name=name, distribution=distribution, version=version, value=value)
        self.plugins.append(info)
        try:
            self._check_unmarked(plugin)
            self._pm.register(plugin, name=f"{distribution}:{name}")
        except Exception as exc:  # pluggy validation errors, unmarked hooks
            self._fail(info, f"invalid hook implementation: {exc}")
            return info
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(plugin)
            hooks = [k.hook for k in hookspecs.KINDS.values()]
            hint = "".join(did_you_mean(a, hooks) for a in dir(plugin) if a.startswith("udm_") and a not in hooks)
            self._fail(info, f"{exc}. Hooks must be one of: {', '.join(hooks)}.{hint}")
            return info
        for kind, spec in hookspecs.KINDS.items():
            hook_name = spec.hook
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    impl.function(register=self._registrar(kind, hook_name, info))
                except BaseException as exc:  # sys.exit() or a BaseException in a plugin is isolated too
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    self._pm.unregister(plugin)
                    self._rollback(info)
                    self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")
                    return info
        return info

    def _check_unmarked(self, plugin: Any) -> None:
        for attr in dir(plugin):
            if attr.startswith("udm_") and callable(getattr(plugin, attr, None)):
                fn = getattr(plugin, attr)
                if not hasattr(fn, hookspecs.PROJECT + "_impl") and hookspecs.kind_of_hook(attr) is not None:
                    raise PluginError(f"{attr} is not marked with @udm.hookimpl; add the decorator")

    def _registrar(self, kind: str, hook_name: str, info: PluginInfo) -> Callable[..., Any]:
        def register(obj: Any, name: str | None = None) -> Any:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise PluginError(
                    f"{info.label}, {hook_name}: register() needs a name; got {obj!r} without one. "
                    f"Pass register(obj, name='...') or give the object a `name` attribute."
                )
            _check_contract(kind, key, obj, info, hook_name)
            table = self._table[kind]
            if key in info.registered.get(kind, []):
                raise PluginError(f"{kind} {key!r}: names must be registered once per plugin; got a second "
                                  f"register() call for it in {info.label}. Remove the duplicate call.")
            if key in table or (kind, key) in self._conflicts:
                other = table[key].plugin if key in table else None
                msg = (
                    f"{kind} {key!r}: names must be unique; registered by both "
                    f"{other.label if other else 'another plugin'} and {info.label}. "
                    f"Uninstall one, or block one with UDM_BLOCK_PLUGINS=<entry point or distribution>."
                )
                table.pop(key, None)
                self._conflicts[(kind, key)] = msg
                raise PluginError(msg)
            table[key] = _Entry(obj, info)
            info.registered.setdefault(kind, []).append(key)
            return obj

        return register

    def _rollback(self, info: PluginInfo) -> None:
        for kind, names in info.registered.items():
            for n in names:
                entry = self._table[kind].get(n)
                if entry is not None and entry.plugin is info:
                    del self._table[kind][n]
        info.registered = {}

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status = "failed"
        info.error = error
        if self.strict:
            raise PluginError(
                f"plugin {info.label}: failed to load: {error}{'' if error.endswith(('.', '?')) else '.'} "
                f"Fix or uninstall the distribution "
                f"{info.distribution!r}, or block it with UDM_BLOCK_PLUGINS={info.name}."
            )


def _check_contract(kind: str, key: str, obj: Any, info: PluginInfo, hook_name: str) -> None:
    spec = hookspecs.KINDS[kind]
    missing = [m for m in spec.required if not hasattr(obj, m)]
    if missing:
        raise PluginError(
            f"{info.label}, {hook_name}: {kind} {key!r} must provide {', '.join(spec.required)}; "
            f"missing {', '.join(missing)}. See the {kind} contract in udm's reference docs."
        )
    if spec.must_be_callable and not callable(obj):
        raise PluginError(f"{info.label}, {hook_name}: {kind} {key!r} must be callable; got {obj!r}.")
    _check_signatures(kind, key, obj, info, hook_name)


def _check_signatures(kind: str, key: str, obj: Any, info: PluginInfo, hook_name: str) -> None:
    """Reject a contract method that cannot be called with the contract's positional arguments."""

    for method, params in hookspecs.KINDS[kind].signatures.items():
        fn = getattr(obj, method, None)
        if not callable(fn):
            continue
        unbound = inspect.isclass(obj) and not isinstance(inspect.getattr_static(obj, method),
                                                          (staticmethod, classmethod))
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: nothing to check
            continue
        try:
            sig.bind(*([None] if unbound else []), *params)
        except TypeError:
            raise PluginError(
                f"{info.label}, {hook_name}: {kind} {key!r}: method {method} must accept ({', '.join(params)}); "
                f"got {method}{sig}. Define it as def {method}(self, {', '.join(params)}) (extra parameters need "
                f"defaults); see the {kind} contract in udm's reference docs."
            ) from None


def _entry_points() -> list[Any]:
    return list(metadata.entry_points(group=GROUP))


def load_registry(entry_points: Iterable[Any] | None = None, *, strict: bool | None = None,
                  only: Iterable[str] | None = None, block: Iterable[str] | None = None,
                  autoload: bool | None = None) -> Registry:
    """Build a fresh :class:`Registry` from entry points in the group ``udm``.

    Args:
        entry_points: objects with ``name``, ``value``, ``load()`` and ``dist`` (``name``,
            ``version``); defaults to the installed ones. Tests pass fakes here.
        strict: raise on the first plugin failure (default: ``UDM_STRICT_PLUGINS``).
        only / block: entry-point or distribution names to load only / never
            (defaults: ``UDM_PLUGINS`` / ``UDM_BLOCK_PLUGINS``).
        autoload: ``False`` loads no entry point (default: not ``UDM_DISABLE_PLUGIN_AUTOLOAD``).
    """
    strict = _env_flag("UDM_STRICT_PLUGINS") if strict is None else strict
    only_set = set(only) if only is not None else _env_list("UDM_PLUGINS")
    block_set = set(block) if block is not None else (_env_list("UDM_BLOCK_PLUGINS") or set())
    autoload = (not _env_flag("UDM_DISABLE_PLUGIN_AUTOLOAD")) if autoload is None else autoload
    reg = Registry(strict=strict)
    reg.settings = {k: v for k, v in (("UDM_DISABLE_PLUGIN_AUTOLOAD", None if autoload else "1"),
                                      ("UDM_PLUGINS", ",".join(sorted(only_set)) if only_set is not None else None),
                                      ("UDM_BLOCK_PLUGINS", ",".join(sorted(block_set)) or None)) if v is not None}
    if not autoload:
        return reg
    eps = _entry_points() if entry_points is None else list(entry_points)

    def dist_of(ep: Any) -> tuple[str, str]:
        dist = getattr(ep, "dist", None)
        return (getattr(dist, "name", None) or "<unknown>", getattr(dist, "version", None) or "")

    eps.sort(key=lambda ep: (dist_of(ep)[0], ep.name))
    for ep in eps:
        dist, version = dist_of(ep)
        if ep.name in block_set or dist in block_set:
            continue
        if only_set is not None and ep.name not in only_set and dist not in only_set:
            continue
        try:
            plugin = ep.load()
        except BaseException as exc:  # sys.exit() or a BaseException at import is isolated too
            if isinstance(exc, KeyboardInterrupt):
                raise
            info = PluginInfo(name=ep.name, distribution=dist, version=version, value=getattr(ep, "value", ""))
            reg.plugins.append(info)
            reg._fail(info, f"import failed: {type(exc).__name__}: {exc}")
            continue
        reg.add_plugin(plugin, name=ep.name, distribution=dist, version=version, value=getattr(ep, "value", ""))
    _warn_unmatched(eps, dist_of, only_set, block_set)
    return reg


def _warn_unmatched(eps: list[Any], dist_of: Callable[[Any], tuple[str, str]], only: set[str] | None,
                    block: set[str]) -> None:
    """A name in UDM_PLUGINS / UDM_BLOCK_PLUGINS that matches no installed entry point or distribution is
    almost always a typo (and a block that silently blocks nothing): say so."""
    known = sorted({ep.name for ep in eps} | {dist_of(ep)[0] for ep in eps})
    for var, names in (("UDM_PLUGINS", only or set()), ("UDM_BLOCK_PLUGINS", block)):
        for name in sorted(set(names) - set(known)):
            warnings.warn(f"{var}: every name must be an installed entry point or distribution; got {name!r}, which "
                          f"matches none.{did_you_mean(name, known)} Installed: {', '.join(known) or '(none)'}.",
                          UdmWarning, stacklevel=3)


_DEFAULT: Registry | None = None


def registry(*, reload: bool = False) -> Registry:
    """The default registry of installed plugins, built on first use and then cached."""
    global _DEFAULT
    if _DEFAULT is None or reload:
        _DEFAULT = load_registry()
    return _DEFAULT


def list_plugins() -> list[PluginInfo]:
    """Every installed plugin with its distribution, version, status and what it registered."""
    return list(registry().plugins)
