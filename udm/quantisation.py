"""Quantised data: values that came from ``bins`` equally spaced levels over ``range``.

8-bit images are 256 levels; udm's image datasets map them to [-1, 1], so level k is the value
``low + k (high - low) / (bins - 1)``. Declaring it (``data: {..., quantisation: {bins: 256, range: [-1, 1]}}``,
or the dataset's own declaration: ``mnist``, ``cifar10``, ``image_folder`` 256 levels, ``digits`` 17) lets
the runner

* check the data before training: every value on one of the levels (a dataset scaled to [0, 1] while
  declared [-1, 1] is caught here, not after hours of training);
* draw image grids over the declared range (not the batch's min and max);
* save the samples' levels next to them (``levels``: uint8 for up to 256 bins), i.e. the 8-bit images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Quantisation"]


@dataclass(frozen=True)
class Quantisation:
    """``bins`` levels, equally spaced over ``range = (low, high)`` inclusive; level k <-> low + k * step."""

    bins: int
    range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ConfigError(f"data.quantisation: bins must be an integer >= 2; got {self.bins!r}. "
                              f"8-bit images have 256.")
        low, high = (float(v) for v in self.range)
        if not low < high:
            raise ConfigError(f"data.quantisation: range must be [low, high] with low < high; got {list(self.range)}. "
                              f"udm's image datasets use [-1, 1].")
        object.__setattr__(self, "range", (low, high))

    @classmethod
    def from_config(cls, value: Any, where: str = "data.quantisation") -> Quantisation:
        """From ``{bins: 256, range: [-1, 1]}`` (``range`` optional)."""
        if isinstance(value, Quantisation):
            return value
        if not isinstance(value, dict) or "bins" not in value or set(value) - {"bins", "range"}:
            raise ConfigError(f"{where}: the value must be a mapping {{bins: <int>, range: [low, high]}}; got "
                              f"{value!r}. E.g. quantisation: {{bins: 256, range: [-1, 1]}}.")
        rng = value.get("range", (-1.0, 1.0))
        if not isinstance(rng, (list, tuple)) or len(rng) != 2 or not all(isinstance(v, (int, float)) for v in rng):
            raise ConfigError(f"{where}: range must be a list [low, high] of numbers; got {rng!r}.")
        return cls(value["bins"], (float(rng[0]), float(rng[1])))

    def to_config(self) -> dict[str, Any]:
        return {"bins": self.bins, "range": list(self.range)}

    @property
    def step(self) -> float:
        """The distance between neighbouring levels, (high - low) / (bins - 1)."""
        return (self.range[1] - self.range[0]) / (self.bins - 1)

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest level index of every value (clamped to [0, bins - 1]): uint8 for up to 256 bins, else int32."""
        k = torch.round((x.detach().double() - self.range[0]) / self.step).clamp(0, self.bins - 1)
        return k.to(torch.uint8 if self.bins <= 256 else torch.int32)

    def values(self, levels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Level indices -> values (float64 arithmetic, then ``dtype``)."""
        return (self.range[0] + levels.double() * self.step).to(dtype)

    def check(self, x: torch.Tensor, where: str = "data.quantisation") -> None:
        """Raise a :class:`ConfigError` unless every value of ``x`` lies on a level (to float32 rounding)."""
        x = x.detach().double()
        off = (x - self.values(self.levels(x), torch.float64)).abs() > 1e-5 * max(1.0, *map(abs, self.range))
        if bool(off.any()):
            i = int(off.flatten().nonzero()[0])
            raise ConfigError(
                f"{where}: the data must lie on the {self.bins} levels of {list(self.range)}; got {int(off.sum())} of "
                f"{x.numel()} values off them (e.g. {float(x.flatten()[i]):.6g}; data range [{float(x.min()):.6g}, "
                f"{float(x.max()):.6g}]). Check bins and range (images in [0, 1] rather than [-1, 1]?), or remove "
                f"quantisation.")
