"""The time-type contract (docs/reference.md, the time-type hook).

A time type decides which t in [0, 1] are used: how training draws t, the decreasing grids that
samplers walk (always ending at t = 0, where the last step returns x0_hat), and how t is encoded
for the model. Implementations (``discrete``, ``continuous``) are plugins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from .errors import ConfigError

__all__ = ["TimeType", "check_grid", "check_encoding", "train_times", "network_time"]


class TimeType(ABC):
    """Base class of time types.

    Encodings share one scale so that one network architecture serves both kinds: the model sees
    ``t * scale`` (the discrete step index n = t * T for ``discrete``; 1000 t for ``continuous``).
    """

    name: ClassVar[str] = ""
    #: spacing names accepted by :meth:`grid`
    spacings: ClassVar[tuple[str, ...]] = ("uniform",)

    @abstractmethod
    def sample_train(self, batch: int, generator: torch.Generator | None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """Training times, float32 ``(batch,)`` in (0, 1]."""

    @abstractmethod
    def grid(self, steps: int, *, spacing: str = "uniform", corruption: Any = None,
             device: torch.device | str | None = None) -> torch.Tensor:
        """A strictly decreasing float64 grid ``(steps + 1,)`` from the start time to 0 (``steps`` model calls)."""

    @abstractmethod
    def encode(self, t: torch.Tensor) -> torch.Tensor:
        """The model's time input for ``t`` ``(batch,)``: float ``(batch,)``."""

    #: the times at which :meth:`encoding_fingerprint` records what the network sees
    ENCODING_PROBES: ClassVar[tuple[float, ...]] = (0.0, 0.001, 0.25, 0.5, 0.75, 1.0)

    def encoding_fingerprint(self) -> list[float]:
        """What the network is fed at :attr:`ENCODING_PROBES`: a fingerprint of the time encoding, saved with a
        run's checkpoints so that sampling it with a time type that encodes t differently (e.g.
        ``discrete(steps=500)`` for a model trained with ``continuous(scale=1000)``) is refused instead of
        silently feeding the network other inputs."""
        probes = torch.tensor(self.ENCODING_PROBES, dtype=torch.float64)
        return [float(v) for v in torch.as_tensor(self.encode(probes)).reshape(-1).tolist()]

    def _check_spacing(self, spacing: str) -> None:
        from .errors import did_you_mean

        if spacing not in self.spacings:
            raise ConfigError(
                f"time {self.name!r}: spacing must be one of {', '.join(self.spacings)}; got {spacing!r}."
                f"{did_you_mean(spacing, self.spacings)}"
            )

    @staticmethod
    def _check_steps(steps: int, where: str, most: int | None = None) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (most is not None and steps > most):
            bound = f" and at most {most}" if most is not None else ""
            raise ConfigError(f"{where}: steps must be an integer >= 1{bound}; got {steps!r}.")


def check_grid(times: torch.Tensor) -> torch.Tensor:
    """Validate a sampling grid: 1-D, at least two entries, strictly decreasing, inside [0, 1]."""
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or times.numel() < 2:
        raise ConfigError(f"sampler: times must be a 1-D grid with at least 2 entries; got shape {tuple(times.shape)}.")
    if not bool((times[1:] < times[:-1]).all()):
        raise ConfigError(f"sampler: times must be strictly decreasing; got {times.tolist()[:8]}...")
    if float(times.min()) < 0 or float(times.max()) > 1:
        raise ConfigError(f"sampler: times must lie in [0, 1]; got range [{float(times.min())}, {float(times.max())}].")
    return times


def lattice(time_type: Any) -> Any:
    """``times -> the time type's lattice`` (``discrete``: round(t T) / T, float64 tensor in and out), or ``None`` for a
    time type without one (``to_index``/``to_time``)."""
    to_index, to_time = getattr(time_type, "to_index", None), getattr(time_type, "to_time", None)
    if callable(to_index) and callable(to_time):
        return lambda t: to_time(to_index(torch.as_tensor(t, dtype=torch.float64)))
    return None


def train_times(corruption: Any, time_type: TimeType, batch: int, generator: torch.Generator | None,
                device: torch.device | str | None = None) -> Any:
    """Training times for a batch: ``time_type.sample_train`` ``(batch,)``, unless the corruption draws its own
    with ``train_times(time_type, batch, generator, device)`` (a product whose parts have independent times
    returns one ``(batch,)`` tensor per part; docs/howto-compose.md)."""
    own = getattr(corruption, "train_times", None)
    if callable(own):
        return own(time_type, batch, generator, device)
    return time_type.sample_train(batch, generator, device=device)


def network_time(time_type: TimeType, corruption: Any, t: Any) -> Any:
    """What the network receives as time for ``t``: ``time_type.encode(t)``; for a corruption whose parts run on
    their own clocks (``part_times(t)``, a product), the encoding of each part's time, as a mapping."""
    parts = getattr(corruption, "part_times", None)
    if callable(parts):
        return {k: time_type.encode(v) for k, v in parts(t).items()}
    return time_type.encode(t)


def check_encoding(time_type: Any, saved: list[float] | None, where: str) -> None:
    """Refuse a time type whose encoding differs from ``saved`` (a checkpoint's :meth:`TimeType.encoding_fingerprint`)."""
    if saved is None:  # checkpoints written before encodings were recorded
        return
    now = time_type.encoding_fingerprint()
    if len(now) != len(saved) or any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(now, saved)):
        probes = ", ".join(f"{p:g}" for p in TimeType.ENCODING_PROBES)
        raise ConfigError(
            f"{where}: the time type must feed the network what it was trained with; got inputs "
            f"{[round(v, 6) for v in now]} at t = {probes}, trained with {[round(v, 6) for v in saved]}. "
            f"Use the run's own time section (e.g. the same steps or scale).")
