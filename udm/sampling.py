"""Sampling and evaluation of a run: after training (``udm run``) or later on its checkpoint (``udm sample``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from . import _artifacts, checkpoint
from ._progress import Progress
from ._schema import schema_of
from .api import describe_start, sample
from .config import sampler_schema
from .errors import ConfigError

__all__ = ["sample_and_evaluate", "sample_run"]

_OWN = ("sampler", "steps", "n", "spacing", "clamp", "seed", "family_options")


def _reference(exp: Any, data: torch.Tensor | None, n: int) -> torch.Tensor:
    """Held-out data for metrics: the dataset redrawn with seed + 1 when it takes a seed, else the data."""
    body = exp.config["data"]
    if "name" in body and "seed" in schema_of(exp.registry.get("dataset", body["name"])).params:
        return exp.build_data(seed=int(body.get("seed") or 0) + 1)[:n]
    return (data if data is not None else exp.build_data())[:n]


def sample_and_evaluate(exp: Any, network: torch.nn.Module, corruption: Any, time_type: Any,
                        data: torch.Tensor | None, run_dir: Path, *, data_shape: list[int] | None = None,
                        log: Any = None, progress: bool | None = None, step: int = 0) -> tuple[Any, dict[str, float]]:
    """Draw ``sample.n`` samples with ``sample.sampler``, write them under ``samples/``, score ``eval``."""
    cfg, run = exp.config["sample"], exp.config["run"]
    seed = cfg["seed"] if cfg.get("seed") is not None else run["seed"]
    shape = (cfg["n"], *(data_shape if data_shape is not None else data.shape[1:]))
    options = {k: v for k, v in cfg.items() if k not in _OWN}
    device = next(network.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with Progress(cfg["steps"], "sample", enabled=progress) as bar:
        x = sample(network, corruption, time_type, shape=shape, sampler=cfg["sampler"], steps=cfg["steps"],
                   spacing=cfg["spacing"], generator=generator, registry=exp.registry, clamp=cfg["clamp"],
                   family_options=cfg.get("family_options"), callback=lambda s: bar.update(s.index + 1), **options)
    reference = None
    two_d = len(shape) == 2 and shape[1] == 2
    if exp.config["eval"] or two_d:
        reference = _reference(exp, data, max(cfg["n"], 1)).to(device)
    stem = f"{cfg['sampler']}-{cfg['steps']}steps-seed{seed}"
    _artifacts.write_samples(run_dir / "samples", stem, x, data_kind=getattr(corruption, "data_kind", "continuous"),
                             reference=reference, value_range=getattr(corruption, "data_range", None))
    metrics = {}
    for name, kwargs in exp.config["eval"].items():
        metrics[name] = float(exp.registry.get("metric", name)(x, reference, **(kwargs or {})))
    grid = time_type.grid(cfg["steps"], spacing=cfg["spacing"], corruption=corruption)
    record = {"step": step, "sampler": cfg["sampler"], "sample_steps": cfg["steps"], "seed": seed,
              "grid": {"spacing": cfg["spacing"], **describe_start(corruption, grid, shape)}, "eval": metrics}
    if log is not None:
        log.write(record)
    with (run_dir / "eval.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return x, metrics


def sample_run(run_dir: str | Path, *, sampler: str | None = None, steps: int | None = None, n: int | None = None,
               seed: int | None = None, overrides: list[str] | tuple[str, ...] = (), registry: Any = None,
               progress: bool | None = None) -> tuple[Any, dict[str, float]]:
    """Sample from a trained run directory's newest checkpoint (EMA weights when saved)."""
    from .experiment import Experiment

    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    latest = checkpoint.latest_checkpoint(run_dir / "checkpoints")
    if not saved.is_file() or latest is None:
        raise ConfigError(f"udm sample: RUN_DIR must be a trained run directory (config.yaml and checkpoints/); "
                          f"got {str(run_dir)!r}. Train it first with `udm run EXP.yaml`.")
    cfg = yaml.safe_load(saved.read_text())
    cfg.pop("versions", None)
    if sampler is not None:  # the old sampler's own options may not apply to the new one
        cfg["sample"] = {k: v for k, v in cfg["sample"].items() if k in _OWN} | {"sampler": sampler}
    for key, value in (("steps", steps), ("n", n), ("seed", seed)):
        if value is not None:
            cfg["sample"][key] = value
    from .config import apply_overrides
    exp = Experiment.from_dict(apply_overrides(cfg, overrides), registry, str(saved))
    sampler_schema(exp.registry, exp.config["sample"]["sampler"])
    ckpt = checkpoint.load_checkpoint(latest)
    data_shape = list(ckpt.extra["data_shape"])
    model_cfg = exp.config["model"]
    corruption, time_type, network = exp.build(data_shape, model_cfg.get("vocab_size"), exp.config["run"]["seed"])
    network.load_state_dict(ckpt.trainer["ema"] if ckpt.trainer["ema"] is not None else ckpt.trainer["network"])
    if callable(getattr(corruption, "load_state_dict", None)):
        corruption.load_state_dict(ckpt.corruption)
    return sample_and_evaluate(exp, network.eval(), corruption, time_type, None, run_dir, data_shape=data_shape,
                               progress=progress, step=ckpt.step)
