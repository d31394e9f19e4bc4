"""Orthonormal bases B for linear-Gaussian corruptions (docs/math.md, "Linear-Gaussian corruptions").

A linear-Gaussian corruption is diagonal in a fixed orthonormal basis: (B x_t)_k = a_k(t) (B x_0)_k +
s_k(t) eps_k. A basis maps data ``(batch, *shape)`` to coefficients of the same shape and back
(``inverse(forward(x)) = x``, and ``forward`` preserves the Euclidean norm, so eps ~ N(0, I) in the data
is N(0, I) in the coefficients). Each basis also describes its coefficients (``frequencies`` for the DCT,
``levels`` for Haar) so that a corruption can give each one its own amplitudes.

* :class:`Identity`: B = I (``gaussian``; coloured noise in pixel space).
* :class:`DCT2`: the orthonormal 2-D DCT-II over the last two dims (heat dissipation / blurring
  diffusion: the Neumann Laplacian is diagonal in it).
* :class:`Haar2`: the orthonormal multi-level 2-D Haar transform over the last two dims (pixelation
  pyramids: average pooling over 2^j blocks keeps exactly the coefficients of levels > j).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from .errors import ConfigError

__all__ = ["Basis", "Identity", "DCT2", "Haar2", "dct_matrix"]


class Basis:
    """An orthonormal change of coordinates acting on ``(batch, *shape)`` tensors."""

    name: ClassVar[str] = ""
    #: True when ``forward`` is the identity (lets corruptions skip the transforms)
    identity: ClassVar[bool] = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients B x, same shape as ``x``."""
        raise NotImplementedError

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        """Data B^T c, same shape as ``c``."""
        raise NotImplementedError


class Identity(Basis):
    """B = I."""

    name = "identity"
    identity = True

    def forward(self, x):
        return x

    def inverse(self, c):
        return c


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``(n, n)``: V[k, i] = c_k cos(pi (i + 1/2) k / n), c_0 = sqrt(1/n),
    c_k = sqrt(2/n); V V^T = I, so the inverse (DCT-III) is V^T. Built in float64, then cast."""
    i = torch.arange(n, dtype=torch.float64)
    v = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)
    v[0] /= math.sqrt(2.0)
    return v.to(dtype=dtype, device=device)


class _MatrixCache:
    """DCT matrices per (n, dtype, device), built once (they are tiny: n x n)."""

    def __init__(self) -> None:
        self._m: dict[tuple[int, torch.dtype, str], torch.Tensor] = {}

    def __call__(self, n: int, dtype: torch.dtype, device) -> torch.Tensor:
        key = (n, dtype, str(device))
        if key not in self._m:
            self._m[key] = dct_matrix(n, dtype, device)
        return self._m[key]


class DCT2(Basis):
    """The orthonormal 2-D DCT-II over the last two dims: C = V_H X V_W^T, X = V_H^T C V_W.

    Coefficient (i, j) has the Neumann-Laplacian eigenvalue :meth:`frequencies` lambda_ij.
    """

    name = "dct2"

    def __init__(self) -> None:
        self._mat = _MatrixCache()

    def forward(self, x):
        h, w = x.shape[-2:]
        return self._mat(h, x.dtype, x.device) @ x @ self._mat(w, x.dtype, x.device).T

    def inverse(self, c):
        h, w = c.shape[-2:]
        return self._mat(h, c.dtype, c.device).T @ c @ self._mat(w, c.dtype, c.device)

    @staticmethod
    def frequencies(h: int, w: int, laplacian: str = "continuous") -> torch.Tensor:
        """Eigenvalues ``(h, w)`` float64 of -Laplacian with Neumann boundaries on the DCT-II basis:
        ``continuous`` lambda_ij = pi^2 (i^2/h^2 + j^2/w^2) (the heat equation on [0, h] x [0, w] at pixel
        centres; Gaussian blur of std sqrt(2 tau)), or ``grid`` lambda_ij = 4 sin^2(pi i / 2h) +
        4 sin^2(pi j / 2w) (the 5-point finite-difference Laplacian on the pixel grid)."""
        ki, kj = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
        if laplacian == "grid":
            fi, fj = 4 * torch.sin(0.5 * math.pi * ki / h) ** 2, 4 * torch.sin(0.5 * math.pi * kj / w) ** 2
        else:
            fi, fj = (math.pi * ki / h) ** 2, (math.pi * kj / w) ** 2
        return fi[:, None] + fj[None, :]


class Haar2(Basis):
    """The orthonormal ``levels``-level 2-D Haar transform over the last two dims (Mallat layout).

    Each level maps 2x2 blocks (a, b; c, d) to (a + b + c + d)/2 (average, kept in the top-left quarter and
    transformed again) and the three details (a - b + c - d)/2, (a + b - c - d)/2, (a - b - c + d)/2.
    :meth:`levels_map` gives each coefficient's level: 1 for the finest details ... ``levels`` for the
    coarsest, ``levels + 1`` for the block averages. Average pooling over 2^j x 2^j blocks (blown back up)
    is exactly "keep the coefficients of level > j".
    """

    name = "haar2"

    def __init__(self, levels: int) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ConfigError(f"basis haar2: levels must be an integer >= 1; got {levels!r}.")
        self.levels = levels

    def _check(self, x: torch.Tensor) -> None:
        b = 2**self.levels
        if x.ndim < 2 or x.shape[-1] % b or x.shape[-2] % b:
            raise ConfigError(f"basis haar2: the last two dims must be divisible by 2^levels = {b}; "
                              f"got shape {tuple(x.shape)}. Lower levels or resize.")

    def forward(self, x):
        self._check(x)
        out = x.clone()
        h, w = x.shape[-2:]
        for _ in range(self.levels):
            blk = out[..., :h, :w]
            a, b = blk[..., 0::2, 0::2], blk[..., 0::2, 1::2]
            c, d = blk[..., 1::2, 0::2], blk[..., 1::2, 1::2]
            h2, w2 = h // 2, w // 2
            new = torch.empty_like(blk)
            new[..., :h2, :w2] = (a + b + c + d) / 2
            new[..., :h2, w2:] = (a - b + c - d) / 2
            new[..., h2:, :w2] = (a + b - c - d) / 2
            new[..., h2:, w2:] = (a - b - c + d) / 2
            out[..., :h, :w] = new
            h, w = h2, w2
        return out

    def inverse(self, c):
        self._check(c)
        out = c.clone()
        h, w = c.shape[-2] >> (self.levels - 1), c.shape[-1] >> (self.levels - 1)
        for _ in range(self.levels):
            h2, w2 = h // 2, w // 2
            s, dh = out[..., :h2, :w2], out[..., :h2, w2:w]
            dv, dd = out[..., h2:h, :w2], out[..., h2:h, w2:w]
            blk = torch.empty_like(out[..., :h, :w])
            blk[..., 0::2, 0::2] = (s + dh + dv + dd) / 2
            blk[..., 0::2, 1::2] = (s - dh + dv - dd) / 2
            blk[..., 1::2, 0::2] = (s + dh - dv - dd) / 2
            blk[..., 1::2, 1::2] = (s - dh - dv + dd) / 2
            out[..., :h, :w] = blk
            h, w = h * 2, w * 2
        return out

    def levels_map(self, h: int, w: int) -> torch.Tensor:
        """Level of every coefficient ``(h, w)`` (long): 1 = finest details, ``levels + 1`` = averages."""
        lv = torch.full((h, w), self.levels + 1, dtype=torch.long)
        hh, ww = h, w
        for level in range(1, self.levels + 1):
            h2, w2 = hh // 2, ww // 2
            lv[:hh, :ww][h2:, :] = level
            lv[:hh, :ww][:, w2:] = level
            hh, ww = h2, w2
        return lv
