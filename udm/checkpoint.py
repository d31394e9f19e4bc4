"""Checkpoints: safetensors for tensors, JSON for the rest; never pickle. Written atomically.

One checkpoint is a directory ``checkpoints/step-00001000/``::

    model.safetensors       the network's weights
    ema.safetensors         the EMA copy (absent without EMA)
    optimizer.safetensors   optimizer state tensors, keyed ``state.<param index>.<name>``
    corruption.safetensors  the corruption's fitted statistics (``state_dict()``)
    rng.safetensors         per rank: the trainer's two generators and torch's global RNG (``rank<r>.<name>``)
    state.json              step, optimizer param groups, scheduler, numpy/python RNG states per rank,
                            the size and SHA-256 of every file above, and its own checksum

It is written into ``checkpoints/.tmp-...`` and renamed into place, so a crash while writing leaves
the previous checkpoints untouched; the oldest beyond ``keep`` are deleted afterwards.

Reading verifies every checksum: a truncated, bit-flipped or missing file (a missing EMA file included:
the EMA is never silently reset) raises :class:`CheckpointError` naming the file.
:func:`newest_intact` walks back to the newest checkpoint that verifies, and says which it skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save as save_bytes

from .errors import ConfigError, UdmError, UdmWarning

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "newest_intact",
           "rng_state", "set_rng_state", "clean", "Checkpoint", "CheckpointError"]

_PREFIX = "step-"
#: where :func:`newest_intact` moves a checkpoint that failed verification (``quarantine=True``)
CORRUPT_PREFIX = "corrupt-"


class CheckpointError(UdmError, RuntimeError):
    """A checkpoint is incomplete or damaged (a file missing, truncated or changed since it was written)."""


@dataclass
class Checkpoint:
    """A checkpoint read back (tensors on CPU)."""

    path: Path
    step: int
    trainer: dict[str, Any]  #: what :meth:`udm.Trainer.load_state_dict` takes
    corruption: dict[str, torch.Tensor]
    rng: dict[int, dict[str, Any]] = field(default_factory=dict)  #: rank -> :func:`rng_state` form
    extra: dict[str, Any] = field(default_factory=dict)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write ``tensors`` as safetensors; returns the file's size and SHA-256 (computed from the bytes written)."""
    raw = save_bytes({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    with open(path, "wb") as fh:
        fh.write(raw)
    _fsync(path)
    return {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def _checksum(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
                          .encode()).hexdigest()


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
    opt = state["optimizer"]
    tensors = {
        "model.safetensors": state["network"],
        **({"ema.safetensors": state["ema"]} if state["ema"] is not None else {}),
        "optimizer.safetensors": {f"state.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()},
        "corruption.safetensors": dict(corruption.state_dict()) if corruption is not None else {},
        "rng.safetensors": {f"rank{r}.{k}": s[k] for r, s in rng.items()
                            for k in ("generator", "data_generator", "torch")},
    }
    files = {name: _write_tensors(tmp / name, t) for name, t in tensors.items()}
    meta = {
        "step": trainer.step,
        "optimizer": {"param_groups": _to_json(opt["param_groups"]),
                      "scalars": {f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()
                                  if not isinstance(v, torch.Tensor)}},
        "scheduler": _to_json(state["scheduler"]),
        "rng": {str(r): {"numpy": s["numpy"], "python": s["python"]} for r, s in rng.items()},
        "extra": _to_json(extra or {}),
        "files": files,
    }
    meta["checksum"] = _checksum(meta)
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


def newest_intact(ckpt_dir: str | Path, *, quarantine: bool = False, optimizer: Any = None,
                  warn: Callable[[str], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies, read back; ``None`` when there is none at all.

    Each damaged checkpoint skipped on the way is reported through ``warn`` (default: a
    :class:`~udm.errors.UdmWarning`), and with ``quarantine`` renamed to ``corrupt-step-...`` (kept for
    inspection, out of the way of the resumed run's own saves). Raises :class:`CheckpointError` when
    checkpoints exist but none verifies.
    """
    warn = warn or (lambda msg: warnings.warn(msg, UdmWarning, stacklevel=3))
    found, problems = list_checkpoints(ckpt_dir), []
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path, optimizer=optimizer)
        except CheckpointError as exc:
            problems.append(str(exc))
            moved = ""
            if quarantine:
                target = path.with_name(CORRUPT_PREFIX + path.name)
                os.rename(path, target)
                moved = f" It was moved to {str(target)!r}."
            warn(f"{exc}{moved} Falling back to the previous checkpoint.")
            continue
        return ckpt
    if problems:
        raise CheckpointError(f"checkpoints: at least one checkpoint in {str(ckpt_dir)!r} must be intact; got "
                              f"{len(problems)} damaged ones. Restore them from a backup, or start the run again.")
    return None


def _read(path: Path, name: str, files: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """The tensors of ``path / name``, verified against the size and SHA-256 in ``files`` (when recorded)."""
    where = path / name
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} must be present; got it missing. The checkpoint "
                              f"is incomplete.") from None
    if files is not None:
        want = files[name]
        got = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        if got != want:
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} must match the checksum written with it; got "
                                  f"{got['bytes']} bytes, sha256 {got['sha256'][:12]}... (written: {want['bytes']} "
                                  f"bytes, {want['sha256'][:12]}...). The file is truncated or damaged.")
    try:
        return load_bytes(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} must be a readable safetensors file; got "
                              f"{type(exc).__name__}: {exc}. The file is damaged.") from None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "state.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: state.json must be valid JSON; got {exc}. The file is "
                              f"damaged.") from None
    if not isinstance(meta, dict) or ("checksum" in meta and meta["checksum"] != _checksum(meta)):
        raise CheckpointError(f"checkpoint {str(path)!r}: state.json must match its checksum; got different "
                              f"content. The file is damaged.")
    return meta


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], template: Any) -> dict[str, Any]:
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
    meta = _read_state(path)
    files = meta.get("files")  # None: written before checksums existed
    has_ema = "ema.safetensors" in files if files is not None else (path / "ema.safetensors").is_file()
    tensors = {name: _read(path, name, files) for name in ("model.safetensors", "optimizer.safetensors",
                                                           "corruption.safetensors", "rng.safetensors")}
    rng_t = tensors["rng.safetensors"]
    rng: dict[int, dict[str, Any]] = {}
    for r, rest in meta["rng"].items():
        rng[int(r)] = {k: rng_t[f"rank{r}.{k}"] for k in ("generator", "data_generator", "torch")} | rest
    trainer = {
        "step": meta["step"],
        "network": tensors["model.safetensors"],
        "ema": _read(path, "ema.safetensors", files) if has_ema else None,
        "optimizer": _optimizer_state(tensors["optimizer.safetensors"], meta["optimizer"], optimizer),
        "scheduler": meta["scheduler"],
        "generator": rng[0]["generator"],
        "data_generator": rng[0]["data_generator"],
    }
    return Checkpoint(path, meta["step"], trainer, tensors["corruption.safetensors"], rng, meta.get("extra", {}))
