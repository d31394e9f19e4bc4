"""Small tensor helpers shared by the core (broadcasting time, dtype handling)."""

from __future__ import annotations

import torch

__all__ = ["append_dims", "as_time", "TimeCache"]


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


def as_time(t, batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """Return ``t`` as a float tensor of shape ``(batch,)`` on ``device`` (accepts floats and tensors)."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    return t


class TimeCache:
    """Memoise a function of a time tensor by the tensor's identity (and version).

    Samplers create one ``t`` tensor per grid point and pass the same object to the denoiser, the
    noise posterior and the forward map, so a corruption can compute its coefficients once per
    grid point. Tensors inside ``torch.func`` transforms or requiring grad are never cached.
    """

    def __init__(self, fn, size: int = 4) -> None:
        self.fn, self.size = fn, size
        self._entries: list[tuple[torch.Tensor, int, object]] = []

    def __call__(self, t: torch.Tensor):
        if t.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(t):
            return self.fn(t)
        for key, version, value in self._entries:
            if key is t and key._version == version:
                return value
        value = self.fn(t)
        self._entries.append((t, t._version, value))  # strong ref: ids cannot be reused meanwhile
        if len(self._entries) > self.size:
            self._entries.pop(0)
        return value
