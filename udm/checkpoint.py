"""Checkpoints: safetensors for tensors, JSON for the rest; never pickle. Written atomically.

One checkpoint is a directory ``checkpoints/step-00001000/``::

    model.safetensors       the network's weights
    ema.safetensors         the EMA copy (absent without EMA)
    optimizer.safetensors   optimizer state tensors, keyed ``state.<param index>.<name>``
    corruption.safetensors  the corruption's fitted statistics (``state_dict()``)
    rng.safetensors         per rank: the trainer's two generators and torch's global RNG (``rank<r>.<name>``)
    state.json              step, optimizer param groups, scheduler, numpy/python RNG states per rank

It is written into ``checkpoints/.tmp-...`` and renamed into place, so a crash while writing leaves
the previous checkpoints untouched; the oldest beyond ``keep`` are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import ConfigError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "rng_state",
           "set_rng_state", "clean", "Checkpoint"]

_PREFIX = "step-"


@dataclass
class Checkpoint:
    """A checkpoint read back (tensors on CPU)."""

    path: Path
    step: int
    trainer: dict[str, Any]  #: what :meth:`udm.Trainer.load_state_dict` takes
    corruption: dict[str, torch.Tensor]
    rng: dict[int, dict[str, Any]] = field(default_factory=dict)  #: rank -> :func:`rng_state` form
    extra: dict[str, Any] = field(default_factory=dict)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(trainer: Any) -> dict[str, Any]:
    """This process's RNG states: the trainer's generators, torch's, numpy's and python's."""
    np_state = np.random.get_state()
    return {
        "generator": trainer.generator.get_state(),
        "data_generator": trainer.data_generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *[x.item() if hasattr(x, "item") else x for x in np_state[2:]]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(trainer: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    trainer.generator.set_state(state["generator"])
    trainer.data_generator.set_state(state["data_generator"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_json(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        raise TypeError("tensors go to safetensors, not JSON")
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def save_checkpoint(ckpt_dir: str | Path, trainer: Any, *, corruption: Any = None,
                    rng: dict[int, dict[str, Any]] | None = None, keep: int = 3,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``trainer``'s state (and the corruption's statistics) as ``ckpt_dir/step-<step>``.

    ``rng`` maps rank -> :func:`rng_state` (gathered from every rank); default: this process only.
    Returns the checkpoint's path. Keeps the newest ``keep`` checkpoints.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{_PREFIX}{trainer.step:08d}"
    if final.exists():
        return final
    tmp = ckpt_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = trainer.state_dict()
    rng = rng if rng is not None else {0: rng_state(trainer)}
    _write_tensors(tmp / "model.safetensors", state["network"])
    if state["ema"] is not None:
        _write_tensors(tmp / "ema.safetensors", state["ema"])
    opt = state["optimizer"]
    _write_tensors(tmp / "optimizer.safetensors",
                   {f"state.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()})
    _write_tensors(tmp / "corruption.safetensors", dict(corruption.state_dict()) if corruption is not None else {})
    _write_tensors(tmp / "rng.safetensors", {f"rank{r}.{k}": s[k] for r, s in rng.items()
                                             for k in ("generator", "data_generator", "torch")})
    meta = {
        "step": trainer.step,
        "optimizer": {"param_groups": _to_json(opt["param_groups"]),
                      "scalars": {f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()
                                  if not isinstance(v, torch.Tensor)}},
        "scheduler": _to_json(state["scheduler"]),
        "rng": {str(r): {"numpy": s["numpy"], "python": s["python"]} for r, s in rng.items()},
        "extra": _to_json(extra or {}),
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    _fsync(tmp / "state.json")
    os.rename(tmp, final)  # atomic on POSIX: the checkpoint appears complete or not at all
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint: first renamed out of sight (atomic), then removed."""
    doomed = path.parent / f".tmp-delete-{path.name}-{os.getpid()}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean(ckpt_dir: str | Path) -> None:
    """Remove what an interrupted save or delete left behind (``.tmp-*`` and step folders without state.json)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.iterdir():
        if p.name.startswith(".tmp-") or (p.name.startswith(_PREFIX) and not (p / "state.json").is_file()):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest first (temporary directories are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def _optimizer_state(path: Path, meta: dict[str, Any], template: Any) -> dict[str, Any]:
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    if template is not None:  # JSON has no tuples: give back the optimizer's own types (AdamW betas)
        for saved, current in zip(groups, template.state_dict()["param_groups"]):
            for k, v in current.items():
                if isinstance(v, tuple) and isinstance(saved.get(k), list):
                    saved[k] = tuple(saved[k])
    return {"state": state, "param_groups": groups}


def load_checkpoint(path: str | Path, *, optimizer: Any = None) -> Checkpoint:
    """Read a checkpoint directory back (no pickle anywhere). ``optimizer``: restores tuple-typed options."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise ConfigError(f"checkpoint: {str(path)!r} must be a complete checkpoint directory (with state.json); "
                          f"got one without. Use udm.checkpoint.latest_checkpoint(run_dir / 'checkpoints').")
    meta = json.loads((path / "state.json").read_text())
    rng_t = load_file(str(path / "rng.safetensors"))
    rng: dict[int, dict[str, Any]] = {}
    for r, rest in meta["rng"].items():
        rng[int(r)] = {k: rng_t[f"rank{r}.{k}"] for k in ("generator", "data_generator", "torch")} | rest
    ema = path / "ema.safetensors"
    trainer = {
        "step": meta["step"],
        "network": load_file(str(path / "model.safetensors")),
        "ema": load_file(str(ema)) if ema.is_file() else None,
        "optimizer": _optimizer_state(path, meta["optimizer"], optimizer),
        "scheduler": meta["scheduler"],
        "generator": rng[0]["generator"],
        "data_generator": rng[0]["data_generator"],
    }
    return Checkpoint(path, meta["step"], trainer, load_file(str(path / "corruption.safetensors")), rng,
                      meta.get("extra", {}))
