"""Sampling and evaluation of a run: after training (``udm run``) or later on its checkpoint (``udm sample``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import _artifacts, _plots, _rundir, checkpoint
from ._progress import progress_bar
from ._options import check_draws_variance, sampler_own_keys
from ._schema import schema_of
from .accelerators import accelerate
from .api import (describe_start, model_device_dtype, resolve_sampler, resolve_steps, sample, sample_start,
                  sampling_grid)
from .batch import example_shape, is_parts, shape_for
from .config import load_config, sampler_schema
from .errors import ConfigError
from .time import check_encoding
from .samplers import PerSampleGenerator, SamplerStep, resolve_corrector
from .variance_store import variance_for_run

__all__ = ["sample_and_evaluate", "sample_run", "load_trained_run", "TrainedRun", "SnapshotRecorder"]

_OWN = sampler_own_keys()


def _head(x: Any, k: int | None) -> Any:
    """A CPU copy of the first ``k`` examples (all when ``None``) of a tensor or ``udm.Sequences`` batch."""
    part = x[:k].to("cpu")
    tokens = getattr(part, "tokens", None)
    if tokens is not None:
        return type(part)(tokens.clone(), part.lengths.clone(), part.pad)
    return part.detach().clone()


class SnapshotRecorder:
    """A sampler ``callback`` that keeps the reverse process at about ``count`` grid times, evenly spaced
    from the prior (t = 1) to the sample (t = 0): x_t and the x0_hat predicted from it, for the first
    ``examples`` examples (``None``: all, e.g. a 2-D cloud). The last snapshot is the sample itself. ``view`` maps
    states that are not data to data for the picture (a latent corruption's ``to_data``: the nearest tokens).

    Grid time i's state is the previous step's output (the prior ``x_init`` for i = 0)."""

    def __init__(self, x_init: Any, steps: int, *, count: int = 8, examples: int | None = 4,
                 then: Any = None, view: Any = None) -> None:
        self.examples, self.then = examples, then
        self.view = view if view is not None else (lambda x: x)  # states as data (a latent corruption's to_data)
        self.keep = {round(i * steps / (count - 1)) for i in range(count)} if count > 1 else {steps}
        self.snapshots: list[_plots.Snapshot] = []
        self._state = _head(self.view(x_init), examples)

    def __call__(self, step: SamplerStep) -> None:
        new = _head(self.view(step.x), self.examples)
        if step.index in self.keep:
            self.snapshots.append(_plots.Snapshot(step.t, self._state, _head(self.view(step.x0_hat), self.examples)))
        if step.index + 1 == step.steps:  # the last step's output is the sample: x_0 = x0_hat
            self.snapshots.append(_plots.Snapshot(step.s, new, new))
        self._state = new
        if self.then is not None:
            self.then(step)


def _reference(exp: Any, data: torch.Tensor | None, n: int) -> torch.Tensor:
    """Held-out data for metrics: the dataset redrawn with seed + 1 when it takes a seed, else the data."""
    body = exp.config["data"]
    if "name" in body and "seed" in schema_of(exp.registry.get("dataset", body["name"])).params:
        return exp.build_data(seed=int(body.get("seed") or 0) + 1)[:n]
    return (data if data is not None else exp.build_data())[:n]


def sample_and_evaluate(exp: Any, network: torch.nn.Module, corruption: Any, time_type: Any,
                        data: torch.Tensor | None, run_dir: Path, *, data_shape: list[int] | None = None,
                        log: Any = None, progress: bool | None = None, step: int = 0,
                        fit_missing: bool = False) -> tuple[Any, dict[str, float]]:
    """Draw ``sample.n`` samples with ``sample.sampler`` (``sample.steps`` steps, or the most that fit
    ``sample.nfe`` model calls) and q_theta's ``sample.variance``, write them under ``samples/``, score ``eval``;
    the record in ``eval.jsonl`` has the steps run and the model calls made (``nfe``). ``fit_missing``: fit a
    variance table the run lacks on ``data`` (right after training) instead of refusing."""
    cfg, run = exp.config["sample"], exp.config["run"]
    check_draws_variance(cfg, exp.source)  # udm sample may override the run's variance or draws
    seed = cfg["seed"] if cfg.get("seed") is not None else run["seed"]
    shape = shape_for(cfg["n"], data_shape if data_shape is not None else example_shape(data))
    options = {k: v for k, v in cfg.items() if k not in _OWN}
    spec = resolve_sampler(cfg["sampler"], corruption, exp.registry, options)
    corrector = resolve_corrector(cfg.get("corrector"), corruption, exp.registry, where="sample")
    steps = resolve_steps(spec, cfg.get("steps"), cfg.get("nfe"), options, where="sample", corrector=corrector)
    device = model_device_dtype(network)[0]
    generator = PerSampleGenerator(seed, cfg["n"], device) if cfg.get("noise") == "per_sample" else \
        torch.Generator(device=device).manual_seed(seed)
    network, variance = variance_for_run(cfg.get("variance"), run_dir, network=network, corruption=corruption,
                                         time_type=time_type, step=step, steps=steps, spacing=cfg["spacing"],
                                         where="sample.variance", data=data if fit_missing else None, progress=progress)
    net = accelerate(network.eval(), precision=cfg.get("precision", "fp32"), compile=cfg.get("compile", False),
                     where="sample.precision")
    grid = sampling_grid(spec, time_type, steps, cfg["spacing"], corruption, cfg.get("nfe"), options,
                         variance=variance, shape=shape, corrector=corrector, where="sample")
    parts = is_parts(shape)  # data made of parts: saved part by part, no pictures
    x_init = sample_start(corruption, float(grid[0]), shape if parts else tuple(shape), generator,
                          device=device)  # udm.sample's first draw
    two_d = not parts and len(shape) == 2 and shape[1] == 2
    plots = run.get("plots", True) and not parts
    kind = getattr(corruption, "data_kind", "continuous")
    strips = plots and (kind != "continuous" or two_d or len(shape) in (3, 4))  # tokens, 2-D points, images
    last: list = []
    with progress_bar(steps, "sample", enabled=progress) as bar:
        def callback(s: SamplerStep) -> None:
            bar.update(1)
            last[:] = [s]

        recorder = SnapshotRecorder(x_init, steps, examples=None if two_d else 4, then=callback,
                                    view=getattr(corruption, "to_data", None)) if strips else None
        x = sample(net, corruption, time_type, shape=shape, sampler=spec, steps=steps,
                   spacing=cfg["spacing"], generator=generator, registry=exp.registry, clamp=cfg["clamp"],
                   family_options=cfg.get("family_options"), callback=recorder if strips else callback,
                   x_init=x_init, variance=variance, corrector=corrector, draws=cfg.get("draws", "steps"), **options)
    reference = None
    wanted = {k: v for k, v in exp.config["eval"].items() if k != "nll"}  # eval.nll: udm.likelihoods.evaluate_nll
    if wanted or two_d:
        reference = _reference(exp, data, max(cfg["n"], 1)).to(device)
    metrics = {}
    for name, kwargs in wanted.items():
        metrics[name] = float(exp.registry.get("metric", name)(x, reference, **(kwargs or {})))
    nfe = last[0].nfe if last else 0
    record = {"step": step, "sampler": cfg["sampler"], "sample_steps": steps, "nfe": nfe, "seed": seed,
              "eval": metrics} | ({"variance": cfg["variance"]} if cfg.get("variance") else {})
    if corrector is not None:
        record["corrector"] = cfg["corrector"] if isinstance(cfg["corrector"], (str, dict)) else corrector.name
    if cfg.get("draws", "steps") != "steps":
        record["draws"] = cfg["draws"]
    stem = _artifacts.samples_stem(record)
    record["grid"] = {"spacing": cfg["spacing"], **describe_start(corruption, grid, shape)}
    with_variance = f" + variance {cfg['variance']}" if cfg.get("variance") else ""
    caption = f"{cfg['sampler']}{with_variance}, {steps} steps ({nfe} model calls), seed {seed} (trained {step} steps)" + (
        "\n" + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) if metrics else "")
    quant = exp.quantisation()  # images: drawn over the declared range, and their levels saved
    value_range = quant.range if quant is not None else getattr(corruption, "data_range", None)
    _artifacts.write_samples(run_dir / "samples", stem, x, data_kind=kind, reference=reference,
                             value_range=value_range, caption=caption, plots=plots, quantisation=quant)
    if strips:
        fig = _plots.denoising_figure(recorder.snapshots, data_kind=kind, value_range=value_range,
                                      title=f"reverse process x_t -> x0_hat: {caption}",
                                      vocab_size=getattr(corruption, "vocab_size", None))
        _plots.save(fig, run_dir / "samples" / f"{stem}-denoising.png")
    if log is not None:
        log.write(record)
    _rundir.append_line(run_dir / "eval.jsonl", json.dumps(record))
    return x, metrics


@dataclass
class TrainedRun:
    """A trained run directory loaded for sampling or fitting: the experiment, its plugins and the newest intact
    checkpoint's network (EMA weights when saved)."""

    exp: Any
    corruption: Any
    time_type: Any
    network: torch.nn.Module
    step: int  #: the checkpoint's training step
    data_shape: list[int]


def load_trained_run(run_dir: str | Path, where: str, *, sample: Callable[[dict], dict] | None = None,
                     edit: Callable[[dict], dict] | None = None, overrides: list[str] | tuple[str, ...] = (),
                     registry: Any = None) -> TrainedRun:
    """Read a trained run directory: its saved config (``sample`` section edited, the whole config by ``edit``,
    then ``overrides``), the newest intact checkpoint (a damaged newer one is skipped with a warning), the plugins
    built and the weights loaded. The time type must feed the network what it was trained on."""
    from .experiment import Experiment

    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not _rundir.is_run_dir(run_dir) or not checkpoint.list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"{where}: RUN_DIR must be a trained run directory (config.yaml and checkpoints/); "
                          f"got {str(run_dir)!r}. Train it first with `udm run EXP.yaml`.")
    for name in _rundir.OUTPUTS:
        if (run_dir / name).is_symlink():
            raise ConfigError(f"{where}: {str(run_dir / name)!r} must not be a symbolic link; got a link to "
                              f"{str((run_dir / name).readlink())!r}. Remove the link; udm does not write through links.")
    cfg = load_config(saved)  # the data file is relative to the run directory: the run may have moved
    cfg.pop("versions", None)
    if sample is not None:
        cfg["sample"] = sample(cfg["sample"])
    if edit is not None:
        cfg = edit(cfg)
    from .config import apply_overrides
    exp = Experiment.from_dict(apply_overrides(cfg, overrides), registry, str(saved))
    sampler_schema(exp.registry, exp.config["sample"]["sampler"])
    ckpt = checkpoint.newest_intact(run_dir / "checkpoints")
    saved_shape = ckpt.extra["data_shape"]  # a mapping of shapes for data made of parts
    data_shape = dict(saved_shape) if isinstance(saved_shape, dict) else list(saved_shape)
    model_cfg = exp.config["model"]
    corruption, time_type, network = exp.build(data_shape, model_cfg.get("vocab_size"), exp.config["run"]["seed"])
    check_encoding(time_type, ckpt.extra.get("time_encoding"), f"{where}: time")
    from .variance_head import wrap_for_stage
    network = wrap_for_stage(exp.config["train"], network, data_shape)  # a variance-head run: the mean network + its head
    network.load_state_dict(ckpt.trainer["ema"] if ckpt.trainer["ema"] is not None else ckpt.trainer["network"])
    if callable(getattr(corruption, "load_state_dict", None)):
        corruption.load_state_dict(ckpt.corruption)
    return TrainedRun(exp, corruption, time_type, network.eval(), ckpt.step, data_shape)


def sample_run(run_dir: str | Path, *, sampler: str | None = None, steps: int | None = None, n: int | None = None,
               seed: int | None = None, overrides: list[str] | tuple[str, ...] = (), registry: Any = None,
               progress: bool | None = None, nfe: int | None = None,
               variance: str | None = None) -> tuple[Any, dict[str, float]]:
    """Sample from a trained run directory's newest intact checkpoint (EMA weights when saved); a damaged
    newer checkpoint is skipped with a warning naming it (the run directory is not changed). ``steps`` or
    ``nfe`` (a budget of model calls) replaces the saved config's steps or budget; ``variance`` names q_theta's
    variance (a table fitted by ``udm fit-variance``, a closed form, or the run's head)."""

    def edit(sample: dict[str, Any]) -> dict[str, Any]:
        if sampler is not None:  # the old sampler's own options may not apply to the new one
            sample = {k: v for k, v in sample.items() if k in _OWN} | {"sampler": sampler}
        if steps is not None or nfe is not None:  # a new grid size replaces the saved one, whichever way it was given
            sample.pop("steps", None)
            sample.pop("nfe", None)
        for key, value in (("steps", steps), ("nfe", nfe), ("n", n), ("seed", seed), ("variance", variance)):
            if value is not None:
                sample[key] = value
        return sample

    run = load_trained_run(run_dir, "udm sample", sample=edit, overrides=overrides, registry=registry)
    return sample_and_evaluate(run.exp, run.network, run.corruption, run.time_type, None, Path(run_dir),
                               data_shape=run.data_shape, progress=progress, step=run.step)
