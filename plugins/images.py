"""Built-in image datasets, read from disk or from an installed package (never downloaded).

Each returns float32 ``(n, C, H, W)`` in [-1, 1] (the usual diffusion data range); ``seed`` fixes the
shuffle and the subset taken when ``n`` is given.

``digits``        the 1797 8x8 handwritten digits bundled with scikit-learn (``pip install udm[digits]``),
                  grey levels 0..16 mapped to [-1, 1], shape ``(n, 1, 8, 8)``.
``image_folder``  every PNG/JPEG/BMP/GIF/WebP image in a folder (Pillow, ``pip install udm[images]``),
                  resized to ``size``, RGB (3 channels) or greyscale (``grey=True``, 1 channel).
``npy``           a NumPy ``.npy`` array ``(n, H, W)``, ``(n, C, H, W)`` or ``(n, H, W, C)``
                  (``channels_last=True``); uint8 is mapped from [0, 255], floats are kept.
``mnist``         MNIST's (or Fashion-MNIST's) idx files as distributed (``train-images-idx3-ubyte``,
                  optionally ``.gz``): a file, or the folder holding them (``split`` train or test),
                  ``(n, 1, 28, 28)``.
``cifar10``       CIFAR-10's *binary* batches (``cifar-10-batches-bin``: ``data_batch_1.bin`` ..
                  ``data_batch_5.bin``, ``test_batch.bin``; records of label bytes + 3072 pixel bytes, never
                  the pickled Python version): a ``.bin`` file or the folder, ``(n, 3, 32, 32)``; CIFAR-100's
                  binary files with ``label_bytes=2``.

Datasets read from 8-bit pixels declare ``quantisation`` = 256 levels over [-1, 1] (``digits``: 17), so
the runner checks the data against it and saves the samples' 8-bit levels (:class:`udm.Quantisation`).
"""

from __future__ import annotations

import gzip
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


digits.quantisation = udm.Quantisation(17, (-1.0, 1.0))


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


image_folder.quantisation = udm.Quantisation(256, (-1.0, 1.0))

#: idx type byte -> big-endian numpy dtype (the idx format of LeCun et al.'s MNIST files)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (optionally gzipped) as an array: magic 0, 0, type byte, number of dims, then the
    dims as big-endian uint32 and the data."""
    raw = _read_bytes(Path(path))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ConfigError(f"dataset mnist: {str(path)!r} must be an idx file (magic 0x00 0x00 <type> <ndim>); got "
                          f"bytes {raw[:4].hex(' ') or 'none'}. Pass e.g. train-images-idx3-ubyte(.gz).")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ConfigError(f"dataset mnist: {str(path)!r} must hold {expected} bytes for shape {shape}; got {len(raw)}. "
                          f"The file is truncated or not an idx file.")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


def _one_of(folder: Path, names: list[str], dataset: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"dataset {dataset}: the folder must contain one of {', '.join(names)}; got none in "
                      f"{str(folder)!r}. Pass the file itself or the folder the archive unpacked to.")


def mnist(path: str, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
    """MNIST images ``(n, 1, 28, 28)`` in [-1, 1] from an idx file or the folder holding
    ``{train,t10k}-images-idx3-ubyte[.gz]`` (also ``-images.idx3-ubyte``); any idx3 uint8 file works."""
    if split not in ("train", "test"):
        raise ConfigError(f"dataset mnist: split must be 'train' or 'test'; got {split!r}.")
    p = Path(path)
    if p.is_dir():
        stem = "train" if split == "train" else "t10k"
        p = _one_of(p, [f"{stem}-images{sep}idx3-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")], "mnist")
    elif not p.is_file():
        raise ConfigError(f"dataset mnist: path must be an idx file or a folder of them; got {str(path)!r}.")
    arr = read_idx(p)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"dataset mnist: the idx file must hold uint8 images (n, H, W); got {arr.dtype} {arr.shape}. "
                          f"Pass the images file, not the labels file.")
    return _subset(_to_unit_range(arr[:, None].copy(), "mnist"), n, seed, "mnist")


mnist.quantisation = udm.Quantisation(256, (-1.0, 1.0))


def cifar10(path: str, split: str = "train", n: int | None = None, seed: int = 0, label_bytes: int = 1) -> torch.Tensor:
    """CIFAR-10 images ``(n, 3, 32, 32)`` in [-1, 1] from the binary version: a ``.bin`` file or the folder with
    ``data_batch_1.bin`` .. ``data_batch_5.bin`` (``split="train"``) or ``test_batch.bin`` (``"test"``).

    Each record is ``label_bytes`` label bytes (1 for CIFAR-10, 2 for CIFAR-100) then 1024 red, 1024 green
    and 1024 blue bytes, each plane row-major 32x32."""
    if split not in ("train", "test"):
        raise ConfigError(f"dataset cifar10: split must be 'train' or 'test'; got {split!r}.")
    p = Path(path)
    if p.is_dir():
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
        files = [p / f for f in names if (p / f).is_file()] or [_one_of(p, names, "cifar10")]
    elif p.is_file():
        files = [p]
    else:
        raise ConfigError(f"dataset cifar10: path must be a CIFAR binary .bin file or its folder; got {str(path)!r}. "
                          f"Use the binary version (cifar-10-binary.tar.gz), not the Python pickles.")
    record = label_bytes + 3 * 32 * 32
    arrays = []
    for f in files:
        raw = np.frombuffer(f.read_bytes(), np.uint8)
        if raw.size == 0 or raw.size % record:
            raise ConfigError(f"dataset cifar10: {str(f)!r} must hold whole records of {record} bytes ({label_bytes} "
                              f"label + 3072 pixels); got {raw.size} bytes. Check label_bytes (CIFAR-100: 2).")
        arrays.append(raw.reshape(-1, record)[:, label_bytes:].reshape(-1, 3, 32, 32))
    return _subset(_to_unit_range(np.concatenate(arrays), "cifar10"), n, seed, "cifar10")


cifar10.quantisation = udm.Quantisation(256, (-1.0, 1.0))


@udm.hookimpl
def udm_register_datasets(register):
    for fn in (digits, image_folder, npy, mnist, cifar10):
        register(fn)
