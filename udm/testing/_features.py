"""Named scalar features of batches, the inputs of the conformance kit's two-sample tests.

Every feature has a name, so that a failed test says *what* differs ("token at position 17", "projection
2 of x_s - x_t"), not "feature 8". Float data are summarised by a few coordinates, random projections
onto unit vectors over **all** coordinates and the norm; token data by the token at **every** position
and the number of positions that differ from x_0. Joint (pair) features of (x_t, x_s) add what a
marginal cannot see: projections of the concatenation and of the difference, and per-position pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Features", "as_features", "default_features", "pair_features", "noise_features", "delta_features"]

#: codes of a token pair (a, b) are a * PAIR_BASE + b (exact in float64 for ids below 2^21)
PAIR_BASE = 2**21
N_PROJECTIONS = 6
N_COORDS = 4


@dataclass
class Features:
    """``values (n, k)`` float64, one named column per feature."""

    values: torch.Tensor
    names: list[str]

    def __post_init__(self) -> None:
        self.values = self.values.detach().double().cpu()
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise ValueError(f"Features: values must be (n, {len(self.names)}) to match the names; "
                             f"got {tuple(self.values.shape)}.")

    @staticmethod
    def cat(parts: list["Features"]) -> "Features":
        return Features(torch.cat([p.values for p in parts], 1), [n for p in parts for n in p.names])


def as_features(out: Any, source: str) -> Features:
    """A user's feature function may return a :class:`Features` or a plain ``(n, k)`` tensor (named by column)."""
    if isinstance(out, Features):
        return out
    out = torch.as_tensor(out)
    if out.ndim == 1:
        out = out[:, None]
    return Features(out, [f"feature {j} of {source}" for j in range(out.shape[1])])


def _directions(d: int, generator: torch.Generator, k: int = N_PROJECTIONS) -> torch.Tensor:
    """``(d, k)`` float64 random unit vectors (drawn on the CPU from ``generator``)."""
    v = torch.randn(d, k, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=0, keepdim=True)


def _float_summary(flat: torch.Tensor, generator: torch.Generator, label: str) -> Features:
    flat = flat.detach().double().cpu()
    d = flat.shape[1]
    coords = flat[:, : min(d, N_COORDS)]
    proj = flat @ _directions(d, generator)
    return Features(torch.cat([coords, proj, flat.norm(dim=1, keepdim=True)], 1),
                    [f"{label}[{j}] (flat index)" for j in range(coords.shape[1])]
                    + [f"projection {j} of {label} onto a random unit vector" for j in range(proj.shape[1])]
                    + [f"|{label}| (Euclidean norm)"])


def default_features(x: Any, x0: Any, generator: torch.Generator) -> Features:
    """Named features of a tensor batch ``x (n, ...)``: float data: the first coordinates, 6 random
    projections over all coordinates and the norm; integer data: the token at every position and the
    number of positions that differ from ``x0``. Non-tensor batches need ``features=...``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"udm.testing: the default features need tensor batches; got {type(x).__name__}. "
                        f"Pass features=(x, x0, generator) -> Features (or an (n, k) tensor).")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype.is_floating_point:
        return _float_summary(flat, generator, "x")
    ref = x0.reshape(x0.shape[0], -1).to(flat.device)
    diff = (flat != ref).sum(1, keepdim=True)
    return Features(torch.cat([flat, diff], 1),
                    [f"token at position {j}" for j in range(flat.shape[1])] + ["positions differing from x_0"])


def pair_features(x_t: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor, generator: torch.Generator) -> Features:
    """Named features of pairs (x_t, x_s) of tensor batches, which see the dependence between them.

    Float: 6 random projections of the concatenation (x_t, x_s), 6 of the difference x_s - x_t, and
    |x_s - x_t|. Integer: the pair (x_t, x_s) at every position (coded a * 2^21 + b), and the numbers of
    positions where x_s differs from x_t, where x_s takes back x_0's token that x_t had lost, and where
    x_s loses a token of x_0 that x_t had kept."""
    a, b = x_t.reshape(x_t.shape[0], -1), x_s.reshape(x_s.shape[0], -1)
    if a.dtype.is_floating_point:
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        joint = torch.cat([a, b], 1) @ _directions(2 * a.shape[1], generator)
        diff = b - a
        dproj = diff @ _directions(diff.shape[1], generator)
        return Features(torch.cat([joint, dproj, diff.norm(dim=1, keepdim=True)], 1),
                        [f"projection {j} of (x_t, x_s) onto a random unit vector" for j in range(joint.shape[1])]
                        + [f"projection {j} of x_s - x_t onto a random unit vector" for j in range(dproj.shape[1])]
                        + ["|x_s - x_t|"])
    ref = x0.reshape(x0.shape[0], -1).to(a.device)
    codes = a.double() * PAIR_BASE + b.double()
    counts = torch.stack([(a != b).sum(1), ((a != ref) & (b == ref)).sum(1), ((a == ref) & (b != ref)).sum(1)], 1)
    return Features(torch.cat([codes, counts.double()], 1),
                    [f"pair (x_t, x_s) at position {j}" for j in range(codes.shape[1])]
                    + ["positions where x_s differs from x_t", "positions where x_s takes back x_0's token",
                       "positions where x_s loses x_0's token that x_t kept"])


def delta_features(features: Callable[..., Any]) -> Callable[..., Features]:
    """Pair features from a user's (marginal) feature function: f(x_s) - f(x_t) for each of its features."""

    def pair(x_t: Any, x_s: Any, x0: Any, generator: torch.Generator) -> Features:
        state = generator.get_state()
        ft = as_features(features(x_t, x0, generator), "features")
        generator.set_state(state)  # the same random directions for both
        fs = as_features(features(x_s, x0, generator), "features")
        return Features(fs.values - ft.values, [f"change of {n} from x_t to x_s" for n in fs.names])

    return pair


def noise_features(eps: Any, generator: torch.Generator, label: str = "eps") -> Features | None:
    """Named features of a noise batch: a tensor (float: as :func:`default_features`; integer: the value at
    every position) or a dataclass of tensors (each field, prefixed by its name); ``None`` otherwise."""
    if isinstance(eps, torch.Tensor):
        flat = eps.reshape(eps.shape[0], -1)
        if flat.dtype.is_floating_point:
            return _float_summary(flat, generator, label)
        return Features(flat.double(), [f"{label} at position {j}" for j in range(flat.shape[1])])
    if dataclasses.is_dataclass(eps) and not isinstance(eps, type):
        parts = [noise_features(getattr(eps, f.name), generator, f"{label}.{f.name}") for f in dataclasses.fields(eps)]
        parts = [p for p in parts if p is not None]
        return Features.cat(parts) if parts else None
    return None
