"""What a run writes besides checkpoints: metrics lines, sample files and pictures, the data file reader."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import _plots
from .errors import ConfigError
from .quantisation import Quantisation

__all__ = ["read_data_file", "MetricsLog", "write_samples", "write_loss_plot", "read_jsonl"]


def read_data_file(path: str, where: str = "data.file") -> torch.Tensor:
    """A tensor ``(n, ...)`` from ``.npy`` (no pickle), ``.safetensors`` (one tensor) or ``.txt``/``.csv``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: the file must exist; got {path!r}. Check the path (relative paths are "
                          f"read from the experiment file's folder).")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".safetensors":
        tensors = load_file(str(p))
        if len(tensors) != 1:
            raise ConfigError(f"{where}: a .safetensors data file must hold exactly one tensor; got keys "
                              f"{sorted(tensors)}. Save the data as one tensor.")
        arr = next(iter(tensors.values())).numpy()
    elif suffix in (".txt", ".csv"):
        arr = np.loadtxt(p, delimiter="," if suffix == ".csv" else None, ndmin=2)
    else:
        raise ConfigError(f"{where}: the file type must be .npy, .safetensors, .txt or .csv; got {p.suffix!r}. "
                          f"Convert the data to one of them.")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x.long() if not x.is_floating_point() else x.float()


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (``{"step", "loss", "lr", "seconds"}``, then ``{"eval"}``)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them identically)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", math.inf) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Nothing to flush: every record is appended and closed at once."""

    def losses(self) -> list[float]:
        return [r["loss"] for r in read_jsonl(self.path) if "loss" in r]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_samples(folder: Path, stem: str, x: Any, *, data_kind: str, reference: torch.Tensor | None = None,
                  value_range: tuple[float, float] | None = None, caption: str = "", plots: bool = True,
                  quantisation: Quantisation | None = None) -> list[Path]:
    """Save samples as safetensors (key ``samples``; with ``quantisation`` also ``levels``, the nearest level
    of every value: the 8-bit images) plus a picture (``plots``): a scatter plot over the reference (2-D), a
    grid of the first 64 (images, over the quantisation's range if given), and the token ids as text
    (tokens); ``caption`` titles the picture."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = getattr(x, "tokens", None)
    tensor = tokens if tokens is not None else x
    out = [folder / f"{stem}.safetensors"]
    saved = {"samples": tensor.detach().cpu().contiguous()}
    if quantisation is not None and tensor.is_floating_point():
        saved["levels"] = quantisation.levels(saved["samples"])
        value_range = quantisation.range
    save_file(saved, str(out[0]))
    if data_kind != "continuous" or not tensor.is_floating_point():
        lengths = getattr(x, "lengths", None)
        rows = [r[: int(lengths[i])] if lengths is not None else r for i, r in enumerate(tensor.cpu().tolist())]
        out.append(folder / f"{stem}.txt")
        out[-1].write_text("".join(" ".join(str(v) for v in r) + "\n" for r in rows))
    elif plots and tensor.ndim == 2 and tensor.shape[1] == 2:
        ref = reference[: len(tensor)] if reference is not None else None
        out.append(_plots.save(_plots.scatter_figure(tensor, ref, caption), folder / f"{stem}.png"))
    elif plots and tensor.ndim in (3, 4):
        out.append(_plots.save(_plots.image_grid_figure(tensor[:64], value_range, caption), folder / f"{stem}.png"))
    return out


def write_loss_plot(path: Path, metrics: Path) -> Path:
    """``loss.png`` from the training rows of ``metrics.jsonl`` (loss and learning rate per logged step)."""
    return _plots.save(_plots.loss_figure([r for r in read_jsonl(metrics) if "loss" in r]), path)
