"""Batch-independent noise: every sample draws from its own generator stream (docs/math.md, "Batch-independent noise").

With one ``torch.Generator`` for the batch, sample j's noise depends on how many samples share the batch and on
j's place in it, so the same seed gives different samples at batch size 1, 7 or 100 (a long-standing complaint
about k-diffusion and diffusers). :class:`PerSampleGenerator` *is* a ``torch.Generator`` (so every
``generator=`` argument, rule and corruption accepts it unchanged) that carries one stream per sample, seeded
from ``(seed, sample index)``. While :func:`per_sample_draws` is active, every torch draw given such a generator
is made row by row, row j from stream j: sample j then sees the same numbers whatever the batch size.

Every sampler call enters :func:`per_sample_draws` itself (:func:`udm.samplers.requires` and
:class:`udm.SamplerSpec` do), and so does :func:`udm.sample` for the prior draw. A plain generator takes the
usual path: no interception, no cost.

A draw is split by its first dimension, which must be the batch (``torch.randn((B, ...))``, ``torch.rand_like``,
in-place ``x.normal_()`` on a ``(B, ...)`` tensor), or a multiple of it laid out sample-major
(``torch.multinomial`` on ``(B * L, V)`` rows, as categorical families flatten ``(B, L, V)``). Any other draw
(a shared scalar, ``randperm``) raises :class:`~udm.CapabilityError`: it would tie the samples together.
Bit-identity also needs the model to compute each row independently of the others, which holds for
elementwise and per-row operations (and the oracles of :mod:`udm.testing`), not always for batched matrix
products on every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..errors import CapabilityError, ConfigError

__all__ = ["PerSampleGenerator", "per_sample_draws", "sample_seed"]

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s stream: SplitMix64 (Steele et al. 2014) of ``seed`` and ``index``, 63 bits."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class PerSampleGenerator(torch.Generator):
    """A ``torch.Generator`` with one stream per sample (see the module docstring). Not meant to be subclassed
    (draws are recognised by its exact type). ``generator=`` must be passed by keyword, as torch's draws require.

    Args:
        seed: the run's seed (an integer >= 0).
        indices: the samples of the batch, in order: a count n (samples 0..n-1) or the indices themselves
            (``range(7, 14)`` for the second batch of 7), so that sample j always gets stream ``(seed, j)``.
        device: where the streams live (the batch's device).
    """

    def __new__(cls, seed: int, indices: int | Iterable[int], device: torch.device | str = "cpu"):
        return super().__new__(cls, device=device)

    def __init__(self, seed: int, indices: int | Iterable[int], device: torch.device | str = "cpu") -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"udm.PerSampleGenerator: seed must be an integer >= 0; got {seed!r}. Pass the run's seed.")
        idx = list(range(indices)) if isinstance(indices, int) and not isinstance(indices, bool) else list(indices)
        if not idx or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx):
            raise ConfigError(f"udm.PerSampleGenerator: indices must be a count >= 1 or non-empty sample indices >= 0; "
                              f"got {indices!r}. E.g. indices=100 or indices=range(7, 14).")
        self.seed, self.indices = seed, idx
        self.manual_seed(sample_seed(seed, 1 << 40))  # the shared stream: used by nothing while draws are split
        self.streams = [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in idx]

    @property
    def batch(self) -> int:
        return len(self.streams)

    def __repr__(self) -> str:
        return f"PerSampleGenerator(seed={self.seed}, indices={self.indices[0]}..{self.indices[-1]}, device={self.device})"


#: torch functions that draw, with where their batch dimension is read: "size" (a size argument),
#: "input" (the first tensor argument; the output is shaped like it or has its rows)
_FACTORIES = {torch.randn: "size", torch.rand: "size", torch.randint: "size"}
_LIKE = {torch.randn_like, torch.rand_like, torch.randint_like, torch.multinomial, torch.binomial, torch.poisson,
         torch.bernoulli, torch.normal, torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_,
         torch.Tensor.exponential_, torch.Tensor.random_, torch.Tensor.geometric_, torch.Tensor.log_normal_,
         torch.Tensor.cauchy_}
_IN_PLACE = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
             torch.Tensor.random_, torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_}


def _name(func: Any) -> str:
    return getattr(func, "__name__", repr(func))


def _refuse(func: Any, shape: Any, batch: int) -> CapabilityError:
    return CapabilityError(
        f"per-sample noise: a draw must have the batch ({batch}) as its first dimension; got {_name(func)} of shape "
        f"{tuple(shape)}. This sampler or corruption draws noise shared across the batch; sample with a plain "
        f"torch.Generator, or make the draw batch-first.")


def _size_arg(args: tuple, kwargs: dict) -> tuple[tuple, int | None, str | None]:
    """The size of a factory call and where it is: (size, position in args, or the keyword)."""
    if "size" in kwargs:
        return tuple(kwargs["size"]), None, "size"
    for pos in range(len(args) - 1, -1, -1):  # randint(low, high, size): the size is the last sequence argument
        a = args[pos]
        if isinstance(a, (tuple, list, torch.Size)):
            return tuple(a), pos, None
    ints = [a for a in args if isinstance(a, int)]  # randn(3, 2)
    return tuple(ints), -1, None


def _split_factory(func: Any, args: tuple, kwargs: dict, gen: PerSampleGenerator) -> torch.Tensor:
    size, pos, key = _size_arg(args, kwargs)
    if not size or size[0] != gen.batch:
        raise _refuse(func, size, gen.batch)
    row = (1, *size[1:])
    rows = []
    for stream in gen.streams:
        if key is not None:
            a, kw = args, {**kwargs, "size": row, "generator": stream}
        elif pos == -1:
            a, kw = row, {**kwargs, "generator": stream}
        else:
            a, kw = (*args[:pos], row, *args[pos + 1:]), {**kwargs, "generator": stream}
        rows.append(func(*a, **kw))
    return torch.cat(rows, 0)


def _split_like(func: Any, args: tuple, kwargs: dict, gen: PerSampleGenerator) -> torch.Tensor:
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None or first.ndim == 0 or first.shape[0] % gen.batch:
        raise _refuse(func, () if first is None else first.shape, gen.batch)
    k = first.shape[0] // gen.batch
    if func in _IN_PLACE:
        for j, stream in enumerate(gen.streams):
            func(first[j * k:(j + 1) * k], *args[1:], **{**kwargs, "generator": stream})
        return first
    rows = []
    for j, stream in enumerate(gen.streams):
        a = tuple(x[j * k:(j + 1) * k] if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == first.shape[0]
                  else x for x in args)
        rows.append(func(*a, **{**kwargs, "generator": stream}))
    return torch.cat(rows, 0)


class _PerSampleMode(TorchFunctionMode):
    """Splits every draw given a :class:`PerSampleGenerator` into per-sample draws; everything else passes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        gen = kwargs.get("generator") if kwargs else None
        if gen is None or type(gen) is not PerSampleGenerator:  # every other op: straight through (type(), not
            return func(*args, **(kwargs or {}))                  # isinstance, which is slow on torch classes)
        if func in _FACTORIES:
            return _split_factory(func, args, kwargs, gen)
        if func in _LIKE:
            return _split_like(func, args, kwargs, gen)
        raise CapabilityError(f"per-sample noise: {_name(func)} must be one of the draws udm can split per sample "
                              f"(randn, rand, randint, their _like forms, multinomial, binomial, poisson, bernoulli, "
                              f"normal and the in-place draws); got {_name(func)}. Sample with a plain "
                              f"torch.Generator.")


_STATE = threading.local()


def active() -> bool:
    """Whether draws with a :class:`PerSampleGenerator` are being split per sample in this thread."""
    return getattr(_STATE, "depth", 0) > 0


@contextmanager
def per_sample_draws(generator: Any) -> Iterator[None]:
    """Within the block, draws given a :class:`PerSampleGenerator` are split per sample (a no-op for any other
    generator, and when already active)."""
    if not isinstance(generator, PerSampleGenerator) or active():
        yield
        return
    _STATE.depth = 1
    try:
        with _PerSampleMode():
            yield
    finally:
        _STATE.depth = 0
