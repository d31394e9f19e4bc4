"""The experiment runner: a validated config -> plugins -> training with checkpoints -> samples -> metrics.

Python and YAML name the same plugins with the same keywords::

    result = udm.run_experiment("examples/gaussian_discrete.yaml", overrides=["train.steps=200"])
    result.run_dir / "metrics.jsonl"

A run directory holds ``config.yaml`` (resolved: defaults filled in, plugin versions recorded),
``metrics.jsonl``, ``checkpoints/step-*/`` (see :mod:`udm.checkpoint`), ``samples/`` and ``loss.png``.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import _artifacts, _runlog, checkpoint, distributed
from ._progress import progress_bar
from ._registry import Registry, registry as default_registry
from ._schema import coerce, schema_of
from .config import INJECTED, KIND_OF_SECTION, load_config, validate
from .errors import ConfigError, UdmError
from .quantisation import Quantisation
from .training import Trainer

__all__ = ["Experiment", "RunResult", "TrainingError", "run_experiment"]


class TrainingError(UdmError, RuntimeError):
    """Training stopped (a non-finite loss); the last good checkpoint is intact."""


@dataclass
class RunResult:
    run_dir: Path
    step: int  #: the training step reached
    losses: list[float] = field(default_factory=list)  #: per-step global loss of this invocation
    metrics: dict[str, float] = field(default_factory=dict)
    samples: Any = None
    seconds: float = 0.0  #: training wall-clock of this invocation


@dataclass
class Experiment:
    """A validated experiment (``config`` has every section's defaults filled in) and its registry."""

    config: dict[str, Any]
    registry: Registry
    source: str = "<config>"

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  registry: Registry | None = None) -> Experiment:
        reg = registry or default_registry()
        return cls(validate(load_config(path, overrides), reg, str(path)), reg, str(path))

    @classmethod
    def from_dict(cls, config: dict[str, Any], registry: Registry | None = None, source: str = "<dict>") -> Experiment:
        reg = registry or default_registry()
        return cls(validate(copy.deepcopy(config), reg, source), reg, source)

    # --------------------------------------------------------------- building
    def _kwargs(self, section: str, skip: tuple[str, ...] = ("name",)) -> dict[str, Any]:
        body = self.config[section]
        kind = KIND_OF_SECTION.get(section)
        params = schema_of(self.registry.get(kind, body["name"])).params if kind else {}
        return {k: coerce(v, params[k].annotation) if k in params else v for k, v in body.items() if k not in skip}

    def build_data(self, **change: Any) -> torch.Tensor:
        """The dataset tensor ``(n, ...)`` (from the plugin or the file)."""
        body = self.config["data"]
        if "file" in body:
            return _artifacts.read_data_file(body["file"])
        return self.registry.create("dataset", body["name"], **{**self._kwargs("data", ("name", "quantisation")),
                                                                 **change})

    def quantisation(self) -> Quantisation | None:
        """The data's levels: ``data.quantisation`` if given, else the dataset's own declaration, else ``None``."""
        body = self.config["data"]
        if body.get("quantisation") is not None:
            return Quantisation.from_config(body["quantisation"])
        declared = getattr(self.registry.get("dataset", body["name"]), "quantisation", None) if "name" in body else None
        return declared if isinstance(declared, Quantisation) else None

    def _inject(self, section: str, data_shape: list[int] | None, vocab_size: int | None) -> dict[str, Any]:
        kw = self._kwargs(section)
        accepts = schema_of(self.registry.get(KIND_OF_SECTION[section], self.config[section]["name"]))
        given = {"data_shape": data_shape, "vocab_size": vocab_size}
        for key in INJECTED[section]:
            if key not in kw and given[key] is not None and key in accepts.params:
                kw[key] = given[key]
        return kw

    def build(self, data_shape: list[int], vocab_size: int | None, seed: int) -> tuple[Any, Any, torch.nn.Module]:
        """(corruption, time type, network); the network's initial weights depend on ``seed`` only."""
        corruption = self.registry.create("corruption", self.config["corruption"]["name"],
                                          **self._inject("corruption", data_shape, vocab_size))
        vocab = getattr(corruption, "vocab_size", None) or vocab_size
        time_type = self.registry.create("time", self.config["time"]["name"], **self._kwargs("time"))
        with torch.random.fork_rng(devices=[]):  # network init draws from torch's global RNG
            torch.manual_seed(seed)
            network = self.registry.create("model", self.config["model"]["name"],
                                           **self._inject("model", data_shape, vocab))
        return corruption, time_type, network

    def run_dir(self, out: str | Path | None = None) -> Path:
        return Path(out or self.config["run"]["out"] or Path("runs") / Path(self.source).stem)

    def resolved(self, data_shape: list[int], vocab_size: int | None) -> dict[str, Any]:
        """The config as run: defaults, injected shapes, and the versions of everything it names."""
        cfg = {k: dict(v) for k, v in self.config.items() if k != "versions"}
        quant = self.quantisation()
        if quant is not None:
            cfg["data"]["quantisation"] = quant.to_config()
        for section in ("model", "corruption"):
            if "name" in cfg[section]:
                cfg[section] = {"name": cfg[section]["name"], **self._inject(section, data_shape, vocab_size)}
        from . import __version__
        plugins = {f"{s}.{cfg[s]['name']}": self.registry.provider(k, cfg[s]["name"]).label
                   for s, k in KIND_OF_SECTION.items() if "name" in cfg[s]}
        plugins[f"sample.{cfg['sample']['sampler']}"] = self.registry.provider("sampler", cfg["sample"]["sampler"]).label
        cfg["versions"] = {"udm": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
                           "plugins": plugins}
        return _plain(cfg)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {s: {k: v for k, v in cfg.get(s, {}).items() if k not in INJECTED.get(s, ())} for s in KIND_OF_SECTION}
    out["train"] = {k: v for k, v in cfg.get("train", {}).items() if k != "steps"}
    return out


def _prepare_dir(exp: Experiment, run_dir: Path, resume: bool, main: bool) -> Path | None:
    ckpts = run_dir / "checkpoints"
    latest = checkpoint.latest_checkpoint(ckpts)
    if latest is not None and not resume:
        raise ConfigError(f"run.out: the run directory must not hold checkpoints unless resuming; got {str(run_dir)!r} "
                          f"with {latest.name}. Pass --resume to continue it, or choose another run.out.")
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        before = _comparable(yaml.safe_load(saved.read_text()) or {})
        if before != _comparable(exp.config):
            raise ConfigError(f"--resume: the experiment must match the run it resumes; got a different config than "
                              f"{str(saved)!r}. Only train.steps, sample, eval and run may change on resume.")
    if main:
        ckpts.mkdir(parents=True, exist_ok=True)
        checkpoint.clean(ckpts)  # what a save or delete interrupted by a crash left behind
    return latest if resume else None


def run_experiment(experiment: Experiment | str | Path, *, out: str | Path | None = None, resume: bool = False,
                   overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None,
                   sample: bool = True, progress: bool | None = None) -> RunResult:
    """Train (resuming from the newest checkpoint if ``resume``), then sample and evaluate (``sample``)."""
    exp = experiment if isinstance(experiment, Experiment) else Experiment.from_file(experiment, overrides, registry)
    run, train_cfg = exp.config["run"], dict(exp.config["train"])
    d, device = distributed.setup(run["device"])
    try:
        return _run(exp, d, device, run, train_cfg, out, resume, sample, progress)
    finally:
        distributed.teardown()


def _run(exp: Experiment, d: distributed.Dist, device: torch.device, run: dict[str, Any], train_cfg: dict[str, Any],
         out: str | Path | None, resume: bool, do_sample: bool, progress: bool | None) -> RunResult:
    run_dir = exp.run_dir(out)
    latest = _prepare_dir(exp, run_dir, resume, d.is_main)
    _seed_globals(run["seed"] + distributed.RANK_SEED_STRIDE * d.rank)
    data = exp.build_data()
    quant = exp.quantisation()
    if quant is not None:
        if not (isinstance(data, torch.Tensor) and data.is_floating_point()):
            raise ConfigError(f"data.quantisation: the data must be continuous (a float tensor) to be quantised; got "
                              f"{getattr(data, 'dtype', type(data).__name__)}. Remove quantisation for token data.")
        quant.check(data)
    data_shape = list(data.shape[1:])
    tokens = getattr(data, "tokens", data)  # udm.Sequences keeps its tokens padded
    vocab = int(tokens.max()) + 1 if not tokens.is_floating_point() and tokens.numel() else None
    corruption, time_type, network = exp.build(data_shape, vocab, run["seed"])
    steps, batch_size = train_cfg.pop("steps"), train_cfg.pop("batch_size")
    distributed.check_batch(batch_size, d)
    params = schema_of(Trainer).params
    # every rank seeds the batch and the noise/time generators alike: each draws the global batch and its
    # noise exactly as one process would, and trains on its own slice (see udm.distributed)
    trainer = Trainer(network, corruption, time_type, seed=run["seed"], device=device,
                      **{k: coerce(v, params[k].annotation) for k, v in train_cfg.items()})
    trainer.shard = (d.rank, d.world)
    trainer.loss_network = distributed.wrap(trainer.network, d, device)
    log = _runlog.open_log(run["log"], run_dir, d.is_main)
    if latest is not None:
        _restore(trainer, corruption, latest, d)
        log.truncate_after(trainer.step)
    elif callable(getattr(corruption, "fit", None)):
        corruption.fit(data)
    if d.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(exp.resolved(data_shape, vocab), sort_keys=False))
    try:
        losses, seconds = _train(exp, trainer, corruption, data, steps, batch_size, run, run_dir, log, d, device,
                                 progress, data_shape)
        result = RunResult(run_dir, trainer.step, losses, seconds=seconds)
        if d.is_main:
            if run["plots"]:
                _artifacts.write_loss_plot(run_dir / "loss.png", run_dir / "metrics.jsonl")
            if do_sample:
                from .sampling import sample_and_evaluate
                net = trainer.ema if trainer.ema is not None else trainer.network
                result.samples, result.metrics = sample_and_evaluate(exp, net, corruption, time_type, data, run_dir,
                                                                     log=log, progress=progress, step=trainer.step)
    finally:
        log.close()
    distributed.barrier(d)
    return result


def _seed_globals(seed: int) -> None:
    """Seed torch's, numpy's and python's global RNGs (user models may draw from them: dropout).

    udm's own code draws only from explicit generators; this makes user code reproducible too, and
    checkpoints save and restore these states so that a resumed run continues them exactly."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _restore(trainer: Trainer, corruption: Any, path: Path, d: distributed.Dist) -> None:
    ckpt = checkpoint.load_checkpoint(path, optimizer=trainer.optimizer)
    if sorted(ckpt.rng) != list(range(d.world)):
        raise ConfigError(f"--resume: the number of processes must match the checkpoint's; got {d.world} now and "
                          f"{len(ckpt.rng)} in {str(path)!r}. Resume with torchrun --nproc_per_node={len(ckpt.rng)}.")
    trainer.load_state_dict(ckpt.trainer)
    checkpoint.set_rng_state(trainer, ckpt.rng[d.rank])
    if callable(getattr(corruption, "load_state_dict", None)):
        corruption.load_state_dict(ckpt.corruption)


def _save(trainer: Trainer, corruption: Any, run: dict[str, Any], run_dir: Path, d: distributed.Dist,
          data_shape: list[int]) -> None:
    states = distributed.gather(checkpoint.rng_state(trainer), d)
    if d.is_main:
        checkpoint.save_checkpoint(run_dir / "checkpoints", trainer, corruption=corruption,
                                   rng=dict(enumerate(states)), keep=run["keep"], extra={"data_shape": data_shape})
    distributed.barrier(d)


def _train(exp: Experiment, trainer: Trainer, corruption: Any, data: torch.Tensor, steps: int, batch_size: int,
           run: dict[str, Any], run_dir: Path, log: _runlog.RunLog, d: distributed.Dist, device: torch.device,
           progress: bool | None, data_shape: list[int]) -> tuple[list[float], float]:
    every, log_every, losses, window = run["checkpoint_every"], run["log_every"], [], []
    start = time.perf_counter()
    with progress_bar(steps, "train", enabled=progress if d.is_main else False, start=trainer.step) as bar:
        while trainer.step < steps:
            try:
                loss = trainer.train_step(trainer.next_batch(data, batch_size))
            except FloatingPointError as exc:
                last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
                kept = f"The last good checkpoint is {str(last)!r}; it is intact" if last else "No checkpoint was written"
                raise TrainingError(f"{exc} {kept}. Fix the cause, then run again with --resume.") from None
            loss = distributed.all_mean(loss, d, device)
            losses.append(loss)
            window.append(loss)
            if trainer.step % log_every == 0 or trainer.step == steps:
                log.write({"step": trainer.step, "loss": sum(window) / len(window),
                           "lr": trainer.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - start})
                window = []
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if every and trainer.step % every == 0 and trainer.step < steps:
                _save(trainer, corruption, run, run_dir, d, data_shape)
    seconds = time.perf_counter() - start
    trainer.network.eval()
    _save(trainer, corruption, run, run_dir, d, data_shape)
    return losses, seconds
