"""Keyword-argument schemas read from a callable's signature: which keys it takes, with which types.

Used by :mod:`udm.config` to check every YAML section against the plugin it names, and by
:mod:`udm._validate` to check Python arguments the same way. Types come from annotations (``int``,
``float``, ``str``, ``bool``, ``list[...]``, ``tuple[...]``, ``X | None``, ``Literal[...]``, ``dict``);
parameters without an annotation are checked against their default's type; anything else (a class
such as ``torch.device``) is accepted as written. A range is declared with ``typing.Annotated`` and
:class:`Interval`, so that it is checked (and described) like the type::

    def __init__(self, width: Annotated[int, Interval(ge=1)] = 256, eta: Annotated[float, Interval(0, 1)] = 0.0)
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .plugin_spec import plugin_ref

__all__ = ["Param", "Schema", "Interval", "schema_of", "conforms", "describe", "coerce"]

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any = Any  #: a type (resolved), or ``Any`` when unknown
    default: Any = _EMPTY

    @property
    def required(self) -> bool:
        return self.default is _EMPTY


@dataclass(frozen=True)
class Schema:
    params: dict[str, Param]
    open: bool = False  #: the callable takes ``**kwargs``: any extra key is accepted


@dataclass(frozen=True)
class Interval:
    """A numeric range for ``Annotated[int | float, Interval(...)]``: ``ge``/``le`` (closed ends) or
    ``gt``/``lt`` (open ends); ``Interval(0, 1)`` is [0, 1]. NaN and infinities never conform."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.le is None or value <= self.le)
                and (self.gt is None or value > self.gt) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {self.ge}" if self.ge is not None else f"> {self.gt}"
        if high:
            return f"<= {self.le}" if self.le is not None else f"< {self.lt}"
        return "finite"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to defaults' types
        return {}


def schema_of(fn: Callable[..., Any], *, skip: Sequence[str] = ()) -> Schema:
    """The keyword parameters of ``fn`` (a class: its ``__init__``), less ``skip``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return Schema({}, open=True)
    hints, params, open_ = _hints(fn), {}, False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            open_ = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in skip or p.name == "self":
            continue
        ann = hints.get(p.name, _EMPTY)
        if ann is _EMPTY:
            d = p.default
            ann = type(d) if d is not _EMPTY and type(d) in (int, float, str, bool, list, tuple, dict) else Any
            ann = float if ann is int else ann  # an unannotated ``x=1`` may well mean any number
        params[p.name] = Param(p.name, ann, p.default)
    return Schema(params, open_)


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _is_union(tp: Any) -> bool:
    return _origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _constraints(tp: Any) -> tuple[Any, list[Interval]]:
    """``Annotated[T, Interval(...), ...]`` -> (T, [intervals]); any other ``tp`` -> (tp, [])."""
    if _origin(tp) is typing.Annotated and plugin_ref(tp) is None:
        base, *meta = typing.get_args(tp)
        return base, [m for m in meta if isinstance(m, Interval)]
    return tp, []


def conforms(value: Any, tp: Any) -> bool:
    """Whether a value (from YAML: None, bool, int, float, str, list, dict; or a Python argument)
    fits the annotation ``tp``, ranges declared with :class:`Interval` included."""
    tp, ranges = _constraints(tp)
    if ranges:
        return conforms(value, tp) and all(r(value) for r in ranges)
    if tp is Any or tp is _EMPTY or tp is object:
        return True
    if _origin(tp) is typing.Annotated:
        ref = plugin_ref(tp)
        if ref is not None:
            if isinstance(value, dict):
                return isinstance(value.get("name"), str)
            # a name, or (from Python) an instance; never a YAML number, boolean, list or null
            return isinstance(value, str) or not isinstance(value, (int, float, bool, list, tuple, type(None)))
        return conforms(value, typing.get_args(tp)[0])
    if tp is None or tp is type(None):
        return value is None
    if _is_union(tp):
        return any(conforms(value, a) for a in typing.get_args(tp))
    origin, args = _origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    seq = {list, tuple, Sequence, typing.Sequence}
    if tp in seq or origin in seq:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
        return not args or all(conforms(v, args[0]) for v in value)
    if tp in (dict, Mapping) or origin in (dict, Mapping, typing.Mapping):
        return isinstance(value, dict)
    if inspect.isclass(tp) and tp.__module__ == "builtins":
        return isinstance(value, tp)
    return True  # a class YAML cannot express (torch.device, a callable): leave it to the plugin


def describe(tp: Any) -> str:
    """A short human form of an annotation: ``int``, ``list of int``, ``one of 'a', 'b'``, ``float or None``."""
    tp, ranges = _constraints(tp)
    if ranges:
        base = {"int": "an integer", "float": "a number"}.get(describe(tp), describe(tp))
        return f"{base} " + " and ".join(str(r) for r in ranges)
    if tp is Any or tp is _EMPTY:
        return "any value"
    if _origin(tp) is typing.Annotated:
        ref = plugin_ref(tp)
        if ref is not None:
            return f"a registered {ref.kind} name or a mapping {{name: <{ref.kind}>, <options>}}"
        return describe(typing.get_args(tp)[0])
    if tp is None or tp is type(None):
        return "None"
    if _is_union(tp):
        return " or ".join(dict.fromkeys(describe(a) for a in typing.get_args(tp)))
    origin, args = _origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "a list [" + ", ".join(describe(a) for a in args) + "]"
    if origin in (list, tuple, Sequence) and args:
        return f"a list of {describe(args[0])}"
    if origin in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any) -> Any:
    """Turn a YAML list into a tuple where the annotation asks for a tuple only (e.g. AdamW ``betas``)."""
    tp = _constraints(tp)[0]
    if isinstance(value, list):
        branches = typing.get_args(tp) if _is_union(tp) else (tp,)
        kinds = {(_origin(_constraints(b)[0]) or _constraints(b)[0]) for b in branches if b is not type(None)}
        if kinds == {tuple}:
            return tuple(value)
    return value
