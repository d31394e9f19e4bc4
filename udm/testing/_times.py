"""Which times the conformance kit tests: several near both ends plus randomised ones (seeded), snapped
to the time type's grid when one is given (so discrete corruptions are only asked about their own times)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["candidate_times", "probe_times", "default_chains"]

#: (low, high) ranges of the probe times: two near t = 0, one random in the middle, two near t = 1
PROBES = ((0.005, 0.005), (0.03, 0.08), (0.3, 0.7), (0.9, 0.95), (0.99, 0.99))
#: chains: single steps near t = 1, a random strided step, near t = 0; and a 3-step chain across
CHAINS = (((0.98, 0.98), (0.88, 0.9)),
          ((0.55, 0.85), (0.15, 0.45)),
          ((0.1, 0.12), (0.01, 0.02)),
          ((0.95, 0.95), (0.6, 0.8), (0.3, 0.5), (0.05, 0.05)))


def candidate_times(time_type: Any) -> torch.Tensor | None:
    """The positive times of the finest grid ``time_type`` offers (at most 1000 steps), descending, or
    ``None`` when every t in (0, 1] is allowed (no time type)."""
    if time_type is None:
        return None
    for steps in (1000, 500, 200, 100, 50, 20, 10, 5, 2, 1):
        try:
            grid = torch.as_tensor(time_type.grid(steps), dtype=torch.float64).cpu()
        except Exception:  # noqa: BLE001 - a time type may refuse grids finer than its own
            continue
        return grid[grid > 0]
    raise ValueError(f"udm.testing: time type {time_type!r} offers no grid; pass time_type=None or a usable one.")


def _draw(lo: float, hi: float, rng: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))


def _snap(values: list[float], cand: torch.Tensor | None) -> list[float]:
    """Strictly decreasing times from ``values`` (decreasing), each moved to the nearest candidate and
    pushed apart where two land on the same one."""
    if cand is None:
        return values
    idx = [int((cand - v).abs().argmin()) for v in values]  # cand is descending: larger index = smaller t
    for i in range(1, len(idx)):
        idx[i] = max(idx[i], idx[i - 1] + 1)
    shift = max(0, idx[-1] - (len(cand) - 1))
    idx = [max(0, i - shift) for i in idx]
    for i in range(1, len(idx)):  # only a grid too coarse for the chain can still collide here
        idx[i] = max(idx[i], idx[i - 1] + 1)
    if idx[-1] >= len(cand):
        raise ValueError(f"udm.testing: the time grid has {len(cand)} positive times; a chain needs {len(values)}.")
    return [float(cand[i]) for i in idx]


def probe_times(time_type: Any, rng: torch.Generator) -> list[float]:
    """Times at which the single-time checks run: near 0, near 1 and one random (distinct, descending)."""
    cand = candidate_times(time_type)
    values = sorted({v for v in _snap_each([_draw(lo, hi, rng) for lo, hi in PROBES], cand)}, reverse=True)
    return values


def _snap_each(values: list[float], cand: torch.Tensor | None) -> list[float]:
    if cand is None:
        return values
    return [float(cand[int((cand - v).abs().argmin())]) for v in values]


def default_chains(time_type: Any, rng: torch.Generator) -> list[list[float]]:
    """Sampler chains (decreasing times, ending above 0): three single steps (near 1, strided and random,
    near 0) and one three-step chain."""
    cand = candidate_times(time_type)
    return [_snap([_draw(lo, hi, rng) for lo, hi in chain], cand) for chain in CHAINS]
