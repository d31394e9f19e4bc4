"""PNG pictures without matplotlib: a 40-line PNG encoder (zlib) and three rasterisers.

``scatter`` (2-D samples, optionally over a grey reference), ``image_grid`` (image batches) and
``curve`` (the loss curve, log-scaled when positive). Arrays are ``uint8`` ``(H, W, 3)``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_png", "read_png_size", "scatter", "image_grid", "curve"]

_BLUE, _GREY, _BLACK = (31, 90, 180), (190, 190, 190), (40, 40, 40)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write an 8-bit RGB ``(H, W, 3)`` or grey ``(H, W)`` array as PNG."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    grey = img.ndim == 2
    h, w = img.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, -1)], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if grey else 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    Path(path).write_bytes(data + _chunk(b"IEND", b""))


def read_png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG file (checks the signature)."""
    raw = Path(path).read_bytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    return struct.unpack(">II", raw[16:24])


def _canvas(size: int) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    img[[0, -1], :] = _BLACK
    img[:, [0, -1]] = _BLACK
    return img


def scatter(points: torch.Tensor, reference: torch.Tensor | None = None, size: int = 512) -> np.ndarray:
    """2-D points ``(n, 2)`` in blue over ``reference`` ``(m, 2)`` in grey, on a shared square frame."""
    pts = points.detach().double().cpu().numpy()
    ref = reference.detach().double().cpu().numpy() if reference is not None else np.zeros((0, 2))
    both = np.concatenate([pts, ref]) if len(ref) else pts
    both = both[np.isfinite(both).all(1)]
    lo, hi = (np.quantile(both, [0.001, 0.999], axis=0) if len(both) else (np.zeros(2) - 1, np.zeros(2) + 1))
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.1, 1e-6)
    img = _canvas(size)
    for arr, colour in ((ref, _GREY), (pts, _BLUE)):
        arr = arr[np.isfinite(arr).all(1)]
        px = ((arr - centre) / half * 0.5 + 0.5) * (size - 1)
        col, row = px[:, 0].round().astype(int), (size - 1 - px[:, 1]).round().astype(int)
        keep = (col >= 1) & (col < size - 1) & (row >= 1) & (row < size - 1)
        img[row[keep], col[keep]] = colour
    return img


def image_grid(images: torch.Tensor, value_range: tuple[float, float] | None = None, nrow: int = 8,
               pad: int = 2, scale: int = 1) -> np.ndarray:
    """A grid of images ``(n, C, H, W)`` (C = 1 or 3) or ``(n, H, W)``; values mapped from ``value_range``;
    each image enlarged ``scale`` times (nearest neighbour) so that tiny images stay legible."""
    x = images.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1).mul(255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x[:, :3]
    n, _, h, w = x.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    img = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        img[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
            x[i].permute(1, 2, 0).numpy()
    return img


def curve(values: list[float], size: tuple[int, int] = (320, 640)) -> np.ndarray:
    """A polyline of ``values`` over their index (log scale when all positive), framed."""
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    img[[0, -1], :] = _BLACK
    img[:, [0, -1]] = _BLACK
    y = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(y) < 2:
        return img
    if (y > 0).all():
        y = np.log(y)
    lo, hi = np.quantile(y, 0.005), np.quantile(y, 0.995)
    xs = np.linspace(0, len(y) - 1, 4 * w)
    ys = np.interp(xs, np.arange(len(y)), y)
    col = (4 + xs / (len(y) - 1) * (w - 9)).round().astype(int)
    row = (h - 5 - (np.clip(ys, lo, hi) - lo) / max(hi - lo, 1e-12) * (h - 10)).round().astype(int)
    img[row, col] = _BLUE
    img[np.clip(row + 1, 0, h - 1), col] = _BLUE
    return img
