"""The built-in ``mlp`` model: a residual MLP with a sinusoidal time embedding, for vector data."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from einops import pack, unpack
from torch import nn

import udm


timestep_embedding = udm.nn.timestep_embedding  # kept importable from here


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, temb):
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(self.norm(h))) + temb))


class MLP(nn.Module):
    """x_t ``(batch, *data_shape)`` and time encoding ``(batch,)`` -> output ``(batch, *data_shape)``.

    Args:
        data_shape: per-sample shape of the data, e.g. ``[2]``.
        width: hidden width; depth: number of residual blocks; time_dim: time-embedding size.
    """

    name = "mlp"

    def __init__(self, data_shape: tuple[int, ...] | list[int] = (2,), width: Annotated[int, udm.Interval(ge=1)] = 256,
                 depth: Annotated[int, udm.Interval(ge=0)] = 3,
                 time_dim: Annotated[int, udm.Interval(ge=2)] = 64) -> None:
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        dim = math.prod(self.data_shape)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.temb = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))
        flat, data_shape = pack([x], "b *")  # (batch, prod(data_shape))
        h = self.inp(flat) + temb
        act = nn.functional.silu(temb)
        for block, proj in zip(self.blocks, self.temb):
            h = block(h, proj(act))
        return unpack(self.out(h), data_shape, "b *")[0]


@udm.hookimpl
def udm_register_models(register):
    register(MLP)
