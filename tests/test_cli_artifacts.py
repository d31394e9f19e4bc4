"""The run directory's pictures and progress bars: a PNG encoder checked by decoding, bars only on terminals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import torch

from udm._plots import curve, image_grid, scatter, write_png
from udm._progress import Progress


def _decode(raw: bytes) -> np.ndarray:
    """A minimal PNG reader for our own files (8-bit RGB, filter 0): chunks, CRCs and pixels."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, data = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", raw[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + data
        pos += 12 + n
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour == 2
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    assert np.array_equal(_decode((tmp_path / "a.png").read_bytes()), img)


def test_scatter_puts_points_where_they_are():
    pts = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    img = scatter(pts, size=101)
    blue = np.argwhere((img == [31, 90, 180]).all(-1))
    # a 10% margin around [-1, 1]^2: x = -1 -> column 50 - 50/1.1 ~ 4.5; y = 1 -> row ~4.5 (rows grow downwards)
    expected = np.array([[95.5, 4.5], [50, 50], [4.5, 95.5]])  # sorted by row, descending
    assert len(blue) == 3
    assert np.abs(blue[np.lexsort((blue[:, 1], -blue[:, 0]))] - expected).max() <= 1


def test_image_grid_layout_and_range():
    x = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0)])
    img = image_grid(x, value_range=(-1, 1), nrow=2, pad=1)
    assert img.shape == (6, 11, 3)
    assert (img[1:5, 1:5] == 0).all() and (img[1:5, 6:10] == 255).all()
    big = image_grid(x, value_range=(-1, 1), nrow=2, pad=1, scale=3)  # nearest-neighbour enlargement
    assert big.shape == (14, 27, 3)
    assert (big[1:13, 1:13] == 0).all() and (big[1:13, 14:26] == 255).all()


def test_curve_draws_a_decreasing_loss_from_top_left_to_bottom_right():
    img = curve([10.0, 1.0, 0.1], size=(50, 100))
    blue = np.argwhere((img == [31, 90, 180]).all(-1))
    first, last = blue[blue[:, 1].argmin()], blue[blue[:, 1].argmax()]
    assert first[0] < 10 and last[0] > 40


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_on_a_terminal_only():
    quiet = io.StringIO()
    with Progress(10, "train", stream=quiet) as bar:
        bar.update(10, loss=0.5)
    assert quiet.getvalue() == ""
    tty = _Tty()
    with Progress(10, "train", stream=tty) as bar:
        bar.update(5, loss=0.5)
    line = tty.getvalue().strip().split("\r")[-1]
    assert line.startswith("train  50%|############            | 5/10 loss 0.5 ") and "it/s ETA 0:00:" in line
