"""The built-in ``joint_mlp`` model: one residual MLP over a batch of parts (a mapping part -> tensor), for the
``product`` corruption (docs/howto-compose.md).

Each part enters flattened: continuous parts as they are, token parts (``vocab_size[part]`` given) one-hot over
V + 1 ids (the extra id is ``[MASK]``). Each part's time encoding (a mapping, as the product passes them; one
tensor is shared by all parts) gets its own sinusoidal embedding, so the network knows how corrupted each part
is. The output is a mapping with, per part, a tensor shaped like the part (continuous) or logits
``(batch, *shape, V)`` (tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import nn
from torch.nn import functional as F

import udm
from udm.errors import ConfigError
from udm.nn import timestep_embedding

from .mlp import _Block  # the residual block of the mlp model, time-conditioned

__all__ = ["JointMLP"]


class JointMLP(nn.Module):
    """Parts ``{k: (batch, *shape_k)}`` and times ``{k: (batch,)}`` -> outputs ``{k: ...}`` (module docstring).

    Args:
        data_shape: part -> per-example shape (filled in from the data).
        vocab_size: part -> number of tokens for token parts, ``None`` for continuous ones (filled in).
        width, depth, time_dim: hidden width, residual blocks, size of each part's time embedding.
    """

    name = "joint_mlp"

    def __init__(self, data_shape: dict[str, list[int]], vocab_size: dict[str, int | None] | None = None,
                 width: Annotated[int, udm.Interval(ge=1)] = 256, depth: Annotated[int, udm.Interval(ge=0)] = 3,
                 time_dim: Annotated[int, udm.Interval(ge=2)] = 64) -> None:
        super().__init__()
        if not isinstance(data_shape, Mapping) or not data_shape:
            raise ConfigError(f"model joint_mlp: data_shape must be a mapping part -> per-example shape (data made of "
                              f"parts); got {data_shape!r}. Use mlp for a single tensor.")
        vocab = dict(vocab_size or {})
        self.parts = {str(k): tuple(int(d) for d in s) for k, s in data_shape.items()}
        self.vocab = {k: (int(vocab[k]) if vocab.get(k) is not None else None) for k in self.parts}
        self.time_dim = time_dim
        size = {k: math.prod(s) * ((v + 1) if v else 1) for k, (s, v) in
                ((k, (s, self.vocab[k])) for k, s in self.parts.items())}
        self.inp = nn.Linear(sum(size.values()), width)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim * len(self.parts), width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.temb = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.heads = nn.ModuleDict({k: nn.Linear(width, math.prod(s) * (self.vocab[k] or 1))
                                    for k, s in self.parts.items()})
        self.norm = nn.LayerNorm(width)

    def _flat(self, k: str, x: torch.Tensor) -> torch.Tensor:
        v = self.vocab[k]
        if v:
            return F.one_hot(x.long().clamp(0, v), v + 1).flatten(1).float()
        return x.flatten(1)

    def forward(self, x: Mapping[str, torch.Tensor], t: Any) -> dict[str, torch.Tensor]:
        missing = [k for k in self.parts if not isinstance(x, Mapping) or k not in x]
        if missing:
            raise ConfigError(f"model joint_mlp: x must be a mapping with the parts {', '.join(self.parts)}; got "
                              f"{sorted(x) if isinstance(x, Mapping) else type(x).__name__}.")
        times = t if isinstance(t, Mapping) else {k: t for k in self.parts}
        temb = torch.cat([timestep_embedding(times[k], self.time_dim) for k in self.parts], -1)
        first = next(iter(x.values()))
        temb = self.time_mlp(temb.to(self.inp.weight.dtype).to(first.device))
        h = self.inp(torch.cat([self._flat(k, x[k]).to(self.inp.weight.dtype) for k in self.parts], -1)) + temb
        act = F.silu(temb)
        for block, proj in zip(self.blocks, self.temb):
            h = block(h, proj(act))
        h = F.silu(self.norm(h))
        out = {}
        for k, s in self.parts.items():
            o = self.heads[k](h)
            out[k] = o.view(-1, *s, self.vocab[k]) if self.vocab[k] else o.view(-1, *s)
        return out


@udm.hookimpl
def udm_register_models(register):
    register(JointMLP)
