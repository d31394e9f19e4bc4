"""Small tensor helpers shared by the core (broadcasting time)."""

from __future__ import annotations

import torch

__all__ = ["append_dims"]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Broadcast a per-sample vector ``v`` of shape ``(batch,)`` (or ``(1,)``) against data of ``ndim`` dims.

    Returns a view of shape ``(batch, 1, ..., 1)``. This is the one place udm reshapes time for
    broadcasting; plugins should use it instead of ad-hoc ``view(-1, 1, 1, 1)``.
    """
    if v.ndim == 0:
        v = v.reshape(1)
    if v.ndim != 1:
        raise ValueError(f"append_dims: v must have shape (batch,); got shape {tuple(v.shape)}.")
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))

