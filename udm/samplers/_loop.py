"""The one sampling loop every rule shares (DESIGN.md §3, k-diffusion style: stateless functions).

    for each (t, s) on the grid:   x0_hat = D(x_t, t)            (predict)
                                   x_s    = rule(x_t, x0_hat, t, s)  (correct)
    the last step to s = 0 returns x0_hat itself (MATH.md §6.4: F_0^{-1} is undefined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CapabilityError
from .._tensor import grid_times
from ..time import check_grid

__all__ = ["SamplerStep", "StepContext", "sample_loop", "require"]


@dataclass
class SamplerStep:
    """What ``callback`` receives after each step."""

    index: int  #: 0-based step number
    steps: int  #: total number of steps
    t: float  #: the time stepped from
    s: float  #: the time stepped to
    x: Any  #: the new state x_s (x0_hat on the last step to 0)
    x0_hat: Any  #: the prediction made at t


@dataclass
class StepContext:
    """Everything a rule may use besides (x_t, x0_hat, t, s)."""

    denoiser: Callable[..., Any]
    corruption: Any
    generator: torch.Generator | None
    clamp: bool
    index: int = 0  #: the step being taken (0-based), kept current by :func:`sample_loop`


def require(corruption: Any, rule: str, *caps: str) -> None:
    """Raise :class:`CapabilityError` when ``corruption`` lacks any of ``caps``."""
    from ..corruption import capabilities

    have = capabilities(corruption)
    missing = [c for c in caps if c not in have]
    if missing:
        name = getattr(corruption, "name", type(corruption).__name__)
        raise CapabilityError(
            f"sampler rule {rule!r}: corruption {name!r} must offer {', '.join(caps)}; "
            f"it lacks {', '.join(missing)}. Choose a sampler the corruption supports "
            f"(`udm plugins` lists them per corruption) or implement the missing method."
        )


def predict(ctx: StepContext, x: Any, t: torch.Tensor) -> Any:
    """x0_hat = D(x, t), clamped to the corruption's ``data_range`` when ``ctx.clamp``."""
    x0 = ctx.denoiser(x, t, ctx.generator)
    rng = getattr(ctx.corruption, "data_range", None)
    if ctx.clamp and rng is not None:
        x0 = x0.clamp(*rng)
    return x0


def _batch(x: Any) -> tuple[int, torch.device]:
    if isinstance(x, torch.Tensor):
        return x.shape[0], x.device
    return len(x), x.device


def sample_loop(step: Callable[..., Any], denoiser: Callable[..., Any], corruption: Any, times: Any, x_init: Any, *,
                generator: torch.Generator | None, callback: Callable[[SamplerStep], Any] | None = None,
                clamp: bool = False) -> Any:
    """Run ``step(ctx, x_t, x0_hat, t, s) -> x_s`` over the decreasing grid ``times``.

    ``times`` is a float grid ``(N + 1,)``; the times handed to rules and the denoiser are float64
    tensors of shape ``(batch,)``, created once per grid point (so corruptions may cache their
    coefficients per time tensor) by :func:`udm._tensor.grid_times` (so that :class:`udm.TimeCache`
    evaluates them once on the whole grid). Rules may look per-step tables up by ``ctx.index``.
    """
    grid = check_grid(times)
    batch, device = _batch(x_init)
    values = grid.tolist()
    ts = grid_times(grid, batch, device)
    ctx = StepContext(denoiser, corruption, generator, clamp)
    x = x_init
    n = len(values) - 1
    for i in range(n):
        ctx.index = i
        x0_hat = predict(ctx, x, ts[i])
        x = x0_hat if values[i + 1] == 0.0 else step(ctx, x, x0_hat, ts[i], ts[i + 1])
        if callback is not None:
            callback(SamplerStep(i, n, values[i], values[i + 1], x, x0_hat))
    return x
