"""Batches with parts: a tensor, a :class:`udm.Sequences`, a dataclass of tensors, or a mapping of part name to
any of these (an image and its class label, two modalities; docs/howto-compose.md).

Everything that handles "a batch" without looking inside it (the trainer drawing rows, the loss sharding
them, the sampling loop sizing its time tensors) goes through these helpers, so a batch that is a mapping
``{"image": (n, C, H, W), "label": (n, 1)}`` travels like a tensor does. Every part has the same number of
rows ``n`` (examples); a mapping's values may themselves be mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["is_parts", "batch_size", "batch_device", "rows", "take", "to_device", "example_shape", "shape_for", "map_parts"]


def is_parts(x: Any) -> bool:
    """Whether ``x`` is a batch made of named parts (a mapping)."""
    return isinstance(x, Mapping)


def _first(x: Any) -> Any:
    """The first tensor-like leaf of a batch (for its size and device)."""
    while is_parts(x):
        if not x:
            raise ConfigError("batch: a batch of parts must have at least one part; got an empty mapping. "
                              "Give every part a tensor (n, ...).")
        x = next(iter(x.values()))
    return x


def batch_size(x: Any) -> int:
    """The number of examples n in a batch (every part has n rows)."""
    leaf = _first(x)
    return leaf.shape[0] if isinstance(leaf, torch.Tensor) else len(leaf)


def batch_device(x: Any) -> torch.device:
    """The device a batch lives on (its first part's)."""
    return _first(x).device


def rows(x: Any, idx: torch.Tensor) -> Any:
    """Examples ``idx`` of a data batch, as its own indexing gives them (a ``udm.Sequences`` keeps only the
    padding its rows need), part by part for a mapping."""
    if is_parts(x):
        return {k: rows(v, idx) for k, v in x.items()}
    return x[idx]


def take(x: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of every part, keeping each part's layout (a ``udm.Sequences`` keeps its padded width, so
    that per-token noise still lines up): tensors are indexed (``idx`` moved to their device), dataclasses of
    tensors field by field, mappings part by part."""
    if is_parts(x):
        return {k: take(v, idx) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x[idx.to(x.device)]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: take(getattr(x, f.name), idx) for f in dataclasses.fields(x)
                                         if isinstance(getattr(x, f.name), torch.Tensor)})
    raise TypeError(f"batch: every part must be a tensor, udm.Sequences, a dataclass of tensors or a mapping of "
                    f"these; got {type(x).__name__}. Return tensors (n, ...) from the dataset.")


def to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """The batch on ``device`` (each part moved)."""
    if is_parts(x):
        return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    return x.to(device, non_blocking=non_blocking)


def example_shape(x: Any) -> Any:
    """The per-example shape: ``list[int]`` for a tensor-like batch, a mapping of them for a batch of parts."""
    if is_parts(x):
        return {k: example_shape(v) for k, v in x.items()}
    return list(x.shape[1:])


def shape_for(n: int, example: Any) -> Any:
    """The batch shape ``(n, *example)`` for a per-example shape (a mapping of them, part by part)."""
    if is_parts(example):
        return {k: shape_for(n, v) for k, v in example.items()}
    return (int(n), *(int(d) for d in example))


def map_parts(fn: Callable[..., Any], *xs: Any) -> Any:
    """``fn`` applied part by part to batches of the same structure (``fn(*leaves)`` where they are not
    mappings)."""
    if is_parts(xs[0]):
        return {k: map_parts(fn, *(x[k] for x in xs)) for k in xs[0]}
    return fn(*xs)
