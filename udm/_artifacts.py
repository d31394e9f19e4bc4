"""What a run writes besides checkpoints: metrics lines, sample files and pictures, the data file reader."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as save_bytes

from . import _plots
from ._rundir import append_line, atomic_write, read_text_nofollow
from .errors import ConfigError, UdmWarning
from .quantisation import Quantisation

__all__ = ["read_data_file", "MetricsLog", "write_samples", "write_loss_plot", "read_jsonl", "samples_stem"]


def samples_stem(record: dict[str, Any]) -> str:
    """The file stem of one evaluation's samples (``samples/<stem>.png``) from its ``eval.jsonl`` record:
    ``<sampler>-<steps>steps-seed<seed>``, then ``-<variance>`` when q_theta had one, ``-draws-<draws>`` when
    its draws were not the default ``steps``, and ``-<corrector>`` when a corrector ran."""
    stem = f"{record.get('sampler')}-{record.get('sample_steps')}steps-seed{record.get('seed')}"
    corrector = record.get("corrector")
    corrector = corrector.get("name") if isinstance(corrector, dict) else corrector
    return stem + (f"-{record['variance']}" if record.get("variance") else "") + \
        (f"-draws-{record['draws']}" if record.get("draws") else "") + (f"-{corrector}" if corrector else "")


def read_data_file(path: str, where: str = "data.file") -> torch.Tensor:
    """A tensor ``(n, ...)`` from ``.npy`` (no pickle), ``.safetensors`` (one tensor) or ``.txt``/``.csv``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: the file must exist; got {path!r}. Check the path (relative paths are "
                          f"read from the experiment file's folder).")
    suffix = p.suffix.lower()
    if suffix not in _READERS:
        raise ConfigError(f"{where}: the file type must be .npy, .safetensors, .txt or .csv; got {p.suffix!r}. "
                          f"Convert the data to one of them.")
    try:
        arr = _READERS[suffix](p, where)
    except ConfigError:
        raise
    except (ValueError, OSError, SafetensorError, EOFError) as exc:
        raise ConfigError(f"{where}: the file must be a readable {suffix} array (no pickled objects); got "
                          f"{str(path)!r}: {type(exc).__name__}: {exc}. Save it again with numpy/safetensors.") from None
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{where}: the array must hold numbers (bool, integer or float); got dtype {arr.dtype} in "
                          f"{str(path)!r}. Save a numeric array.")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x.long() if not x.is_floating_point() else x.float()


def _read_npy(p: Path, where: str) -> np.ndarray:
    return np.load(p, allow_pickle=False)


def _read_safetensors(p: Path, where: str) -> np.ndarray:
    tensors = load_file(str(p))
    if len(tensors) != 1:
        raise ConfigError(f"{where}: a .safetensors data file must hold exactly one tensor; got keys "
                          f"{sorted(tensors)}. Save the data as one tensor.")
    return next(iter(tensors.values())).numpy()


def _read_text(p: Path, where: str) -> np.ndarray:
    return np.loadtxt(p, delimiter="," if p.suffix.lower() == ".csv" else None, ndmin=2)


_READERS = {".npy": _read_npy, ".safetensors": _read_safetensors, ".txt": _read_text, ".csv": _read_text}


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (``{"step", "loss", "lr", "seconds"}``, then ``{"eval"}``).

    Lines are appended without following links; a line that does not parse (the partial last line a
    crash or a full disk leaves) is dropped with a warning naming the file when the log is read or
    repaired, never an error."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def records(self, *, warn: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
        """The parsed records, and the (1-based) numbers of the lines that did not parse."""
        if not self.path.exists() and not self.path.is_symlink():
            return [], []
        rows, bad = [], []
        lines = read_text_nofollow(self.path).splitlines()
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line) if line.strip() else {}
            except ValueError:
                row = None
            if not isinstance(row, dict):
                bad.append(i)
            elif row:
                rows.append(row)
        if bad and warn:
            last = "the partial last line" if bad == [len(lines)] else f"lines {', '.join(map(str, bad))}"
            warnings.warn(f"{self.path}: dropped {last}, which did not parse as JSON (a crash or a full disk "
                          f"while writing); the file is repaired.", UdmWarning, stacklevel=3)
        return rows, bad

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them identically) and partial lines."""
        if not self.enabled or not (self.path.exists() or self.path.is_symlink()):
            return
        rows, _ = self.records(warn=True)
        keep = [r for r in rows if r.get("step", math.inf) <= step]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_line(self.path, json.dumps(record))

    def close(self) -> None:
        """Nothing to flush: every record is appended and closed at once."""

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records()[0] if "loss" in r]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist; a partial line is dropped)."""
    return MetricsLog(Path(path), False).records()[0]


def write_samples(folder: Path, stem: str, x: Any, *, data_kind: str, reference: torch.Tensor | None = None,
                  value_range: tuple[float, float] | None = None, caption: str = "", plots: bool = True,
                  quantisation: Quantisation | None = None) -> list[Path]:
    """Save samples as safetensors (key ``samples``, or ``samples.<part>`` for data made of parts; with ``quantisation`` also ``levels``, the nearest level
    of every value: the 8-bit images) plus a picture (``plots``): a scatter plot over the reference (2-D), a
    grid of the first 64 (images, over the quantisation's range if given), and the token ids as text
    (tokens); ``caption`` titles the picture."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(x, dict):  # data made of parts: one safetensors file, a tensor per part (samples.<part>)
        path = folder / f"{stem}.safetensors"
        atomic_write(path, save_bytes({f"samples.{k}": getattr(v, "tokens", v).detach().cpu().contiguous()
                                       for k, v in x.items()}))
        return [path]
    tokens = getattr(x, "tokens", None)
    tensor = tokens if tokens is not None else x
    out = [folder / f"{stem}.safetensors"]
    saved = {"samples": tensor.detach().cpu().contiguous()}
    if quantisation is not None and tensor.is_floating_point():
        saved["levels"] = quantisation.levels(saved["samples"])
        value_range = quantisation.range
    atomic_write(out[0], save_bytes(saved))
    if data_kind != "continuous" or not tensor.is_floating_point():
        lengths = getattr(x, "lengths", None)
        rows = [r[: int(lengths[i])] if lengths is not None else r for i, r in enumerate(tensor.cpu().tolist())]
        out.append(folder / f"{stem}.txt")
        atomic_write(out[-1], "".join(" ".join(str(v) for v in r) + "\n" for r in rows))
    elif plots and tensor.ndim == 2 and tensor.shape[1] == 2:
        ref = reference[: len(tensor)] if reference is not None else None
        out.append(_plots.save(_plots.scatter_figure(tensor, ref, caption), folder / f"{stem}.png"))
    elif plots and tensor.ndim in (3, 4):
        out.append(_plots.save(_plots.image_grid_figure(tensor[:64], value_range, caption), folder / f"{stem}.png"))
    return out


def write_loss_plot(path: Path, metrics: Path) -> Path:
    """``loss.png`` from the training rows of ``metrics.jsonl`` (loss and learning rate per logged step)."""
    return _plots.save(_plots.loss_figure([r for r in read_jsonl(metrics) if "loss" in r]), path)
