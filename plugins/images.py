"""Built-in image datasets, read from disk or from an installed package (never downloaded).

Each returns float32 ``(n, C, H, W)`` in [-1, 1] (the usual diffusion data range); ``seed`` fixes the
shuffle and the subset taken when ``n`` is given.

``digits``        the 1797 8x8 handwritten digits bundled with scikit-learn (``pip install udm[digits]``),
                  grey levels 0..16 mapped to [-1, 1], shape ``(n, 1, 8, 8)``.
``image_folder``  every PNG/JPEG/BMP/GIF/WebP image in a folder (Pillow, ``pip install udm[images]``),
                  resized to ``size``, RGB (3 channels) or greyscale (``grey=True``, 1 channel).
``npy``           a NumPy ``.npy`` array ``(n, H, W)``, ``(n, C, H, W)`` or ``(n, H, W, C)``
                  (``channels_last=True``); uint8 is mapped from [0, 255], floats are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import udm
from udm.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _subset(x: torch.Tensor, n: int | None, seed: int, name: str) -> torch.Tensor:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(x)):
        raise ConfigError(f"dataset {name}: n must be an integer in [1, {len(x)}] or None (all); got {n!r}.")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    return x[perm[:n] if n is not None else perm].contiguous()


def digits(n: int | None = None, seed: int = 0) -> torch.Tensor:
    """scikit-learn's 8x8 digits (UCI optdigits test set), ``(n, 1, 8, 8)`` in [-1, 1], shuffled by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError("dataset digits: scikit-learn must be installed; got ImportError "
                          f"({exc}). Install it with `pip install udm[digits]` (or `pip install scikit-learn`).") from exc
    images = torch.from_numpy(load_digits().images.astype(np.float32))  # 0..16
    return _subset((images / 8.0 - 1.0)[:, None], n, seed, "digits")


def _to_unit_range(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"dataset {name}: array dtype must be uint8 or floating; got {arr.dtype}. "
                          f"Convert it with arr.astype('float32') (scaled to [-1, 1]).")
    return torch.from_numpy(arr.astype(np.float32))


def npy(path: str, n: int | None = None, seed: int = 0, channels_last: bool = False) -> torch.Tensor:
    """Images from a ``.npy`` file (see the module docstring); uint8 mapped to [-1, 1]."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset npy: path must be an existing .npy file; got {str(path)!r}.")
    arr = np.load(p, allow_pickle=False)
    if arr.ndim == 4 and channels_last:
        arr = np.moveaxis(arr, -1, 1)
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ConfigError(f"dataset npy: array must have shape (n, H, W), (n, C, H, W) or (n, H, W, C); "
                          f"got {arr.shape}. Reshape it before saving.")
    return _subset(_to_unit_range(np.ascontiguousarray(arr), "npy"), n, seed, "npy")


def image_folder(path: str, size: int | list[int] = 32, grey: bool = False, n: int | None = None,
                 seed: int = 0) -> torch.Tensor:
    """Every image file in the folder ``path`` (sorted by name, not recursive), resized to ``size``
    (an int for square, or ``[height, width]``), as ``(n, 3 or 1, H, W)`` in [-1, 1]."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ConfigError("dataset image_folder: Pillow must be installed; got ImportError "
                          f"({exc}). Install it with `pip install udm[images]` (or `pip install pillow`).") from exc
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"dataset image_folder: path must be an existing folder; got {str(path)!r}.")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"dataset image_folder: the folder must contain images ({', '.join(IMAGE_SUFFIXES)}); "
                          f"got none in {str(path)!r}.")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    arrays = []
    for f in files:
        with Image.open(f) as img:
            img = img.convert("L" if grey else "RGB").resize((w, h), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.uint8))
    arr = np.stack(arrays)
    arr = arr[:, None] if grey else np.moveaxis(arr, -1, 1)
    return _subset(_to_unit_range(np.ascontiguousarray(arr), "image_folder"), n, seed, "image_folder")


@udm.hookimpl
def udm_register_datasets(register):
    for fn in (digits, image_folder, npy):
        register(fn)
