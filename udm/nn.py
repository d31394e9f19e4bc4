"""Small building blocks shared by the built-in networks (and available to users' own)."""

from __future__ import annotations

import math

import torch

__all__ = ["timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM) of time encodings ``(batch,)`` -> ``(batch, dim)``:
    [cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / half), k < half = dim // 2 (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
