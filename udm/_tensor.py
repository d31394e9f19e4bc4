"""Small tensor helpers shared by the core (broadcasting time, dtype handling)."""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["append_dims", "as_time", "TimeCache", "grid_times"]


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


def grid_times(grid: torch.Tensor, batch: int, device=None) -> list[torch.Tensor]:
    """``[torch.full((batch,), grid[i]) for i]`` as float64 on ``device``, each marked as row i of ``grid``
    (until modified in place) so that :class:`TimeCache` evaluates its function once on the whole grid."""
    grid = torch.as_tensor(grid, dtype=torch.float64).to(device).clone()
    ts = []
    for i, v in enumerate(grid.tolist()):
        t = torch.full((batch,), v, dtype=torch.float64, device=device)
        t._udm_grid = (grid, i, t._version)
        ts.append(t)
    return ts


class TimeCache:
    """Memoise a function of a time tensor by the tensor's identity (and version).

    Samplers create one ``t`` tensor per grid point and pass the same object to the denoiser, the
    noise posterior and the forward map, so a corruption can compute its coefficients once per
    grid point. Tensors inside ``torch.func`` transforms or requiring grad are never cached.

    ``fn`` must act per sample (entry i of every output depends on ``t[i]`` alone). For a ``t`` made by
    :func:`grid_times` (as samplers make them), ``fn`` runs once on the whole grid ``(N + 1,)`` and
    ``t`` gets row i of every output, expanded to ``batch`` (a stride-0 view): one evaluation per
    sampler call instead of one per grid point and sample. Cached values are shared: never modify
    them in place.
    """

    def __init__(self, fn, size: int = 4) -> None:
        self.fn, self.size = fn, size
        self._entries: list[tuple[torch.Tensor, int, object]] = []
        self._grid: tuple[torch.Tensor, object] | None = None  # (grid, fn(grid)) of the latest grid

    def __call__(self, t: torch.Tensor):
        if t.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(t):
            return self.fn(t)
        for key, version, value in self._entries:
            if key is t and key._version == version:
                return value
        mark = getattr(t, "_udm_grid", None)
        if mark is not None and mark[2] == t._version and t.ndim == 1:
            grid, i, _ = mark
            if self._grid is None or self._grid[0] is not grid:
                self._grid = (grid, self.fn(grid))
            value = _row(self._grid[1], i, grid.shape[0], t.shape[0])
        else:
            value = self.fn(t)
        self._entries.append((t, t._version, value))  # strong ref: ids cannot be reused meanwhile
        if len(self._entries) > self.size:
            self._entries.pop(0)
        return value


def _row(value, i: int, n: int, batch: int):
    """Row i of every tensor with leading dim ``n`` in ``value`` (tensor, tuple, list, dataclass), expanded to ``batch``."""
    if isinstance(value, torch.Tensor):
        return value[i:i + 1].expand(batch, *value.shape[1:]) if value.ndim and value.shape[0] == n else value
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_row(v, i, n, batch) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _row(getattr(value, f.name), i, n, batch)
                                             for f in dataclasses.fields(value) if f.init})
    return value
