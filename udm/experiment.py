"""The experiment runner: a validated config -> plugins -> a sanity check -> training with checkpoints ->
samples -> metrics.

Python and YAML name the same plugins with the same keywords::

    result = udm.run_experiment("examples/gaussian_discrete.yaml", overrides=["train.steps=200"])
    result.run_dir / "metrics.jsonl"

A run directory holds ``config.yaml`` (resolved: defaults filled in, plugin versions recorded, the data
file relative to the run directory), ``metrics.jsonl``, ``checkpoints/step-*/`` (see :mod:`udm.checkpoint`),
``samples/``, ``loss.png``, and the marker ``.udm-run`` and lock ``.udm-lock`` of :mod:`udm._rundir`, which
also decides which directory a run may write (refusing foreign folders, live runs and finished runs).

Nothing is written before the experiment has passed its checks: the schema (:mod:`udm.config`), then
the data, every plugin and a two-example sanity run (:mod:`udm._preflight`). On ``resume`` the saved
config must agree in everything that fixes the trained model; optimiser settings may change.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from . import _artifacts, _preflight, _rundir, _runlog, _validate, checkpoint, distributed, variance_head
from ._options import RunOptions, TrainOptions, fixed_on_resume
from ._progress import progress_bar
from ._registry import Registry, registry as default_registry
from ._schema import coerce, schema_of
from .config import load_config, plugin_sections, validate
from .errors import ConfigError, UdmError
from .accelerators import resolve_device
from .quantisation import Quantisation
from .training import Trainer

__all__ = ["Experiment", "RunResult", "TrainingError", "RunInterrupted", "run_experiment"]


class TrainingError(UdmError, RuntimeError):
    """Training stopped (a non-finite loss, a failed write); the last good checkpoint is intact."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the run stopped and how to resume it."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir

    def __str__(self) -> str:
        return str(self.args[0])


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
        kind = plugin_sections().get(section)
        params = schema_of(self.registry.get(kind.name, body["name"])).params if kind and "name" in body else {}
        return {k: coerce(v, params[k].annotation) if k in params else v for k, v in body.items() if k not in skip}

    def _create(self, section: str, **kwargs: Any) -> Any:
        """Build the plugin a section names; a failure inside it names the section and its distribution."""
        kind, name = plugin_sections()[section].name, self.config[section]["name"]
        try:
            return self.registry.create(kind, name, **kwargs)
        except UdmError as exc:
            raise ConfigError(f"{self.source}: {section}: {exc}") from None
        except Exception as exc:  # the plugin's own error: name it and where it came from
            label = self.registry.provider(kind, name).label
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(f"{self.source}: {section}: {kind} {name!r} ({label}) must build from the section's "
                              f"keywords; got {type(exc).__name__}: {first}. Check the values in {section}.") from None

    def build_data(self, **change: Any) -> torch.Tensor:
        """The dataset tensor ``(n, ...)`` (from the plugin or the file)."""
        body = self.config["data"]
        if "file" in body:
            return _artifacts.read_data_file(body["file"])
        return self._create("data", **{**self._kwargs("data", ("name", "quantisation")), **change})

    def quantisation(self) -> Quantisation | None:
        """The data's levels: ``data.quantisation`` if given, else the dataset's own declaration, else ``None``."""
        body = self.config["data"]
        if body.get("quantisation") is not None:
            return Quantisation.from_config(body["quantisation"])
        declared = getattr(self.registry.get("dataset", body["name"]), "quantisation", None) if "name" in body else None
        return declared if isinstance(declared, Quantisation) else None

    def _inject(self, section: str, data_shape: list[int] | None, vocab_size: int | None) -> dict[str, Any]:
        kw = self._kwargs(section)
        kind = plugin_sections()[section]
        accepts = schema_of(self.registry.get(kind.name, self.config[section]["name"]))
        given = {"data_shape": data_shape, "vocab_size": vocab_size}
        for key in kind.injected:
            if key not in kw and given[key] is not None and key in accepts.params:
                kw[key] = given[key]
        return kw

    def build(self, data_shape: list[int], vocab_size: int | None, seed: int) -> tuple[Any, Any, torch.nn.Module]:
        """(corruption, time type, network); the network's initial weights depend on ``seed`` only."""
        corruption = self._create("corruption", **self._inject("corruption", data_shape, vocab_size))
        vocab = getattr(corruption, "vocab_size", None) or vocab_size
        time_type = self._create("time", **self._kwargs("time"))
        with torch.random.fork_rng(devices=[]):  # network init draws from torch's global RNG
            torch.manual_seed(seed)
            network = self._create("model", **self._inject("model", data_shape, vocab))
        return corruption, time_type, network

    def check(self, device: str | torch.device | None = None) -> _preflight.Built:
        """What ``udm check`` does after the schema: build everything and run the sanity check
        (:mod:`udm._preflight`) on ``device`` (default ``run.device``, else CPU)."""
        _validate.check_device(self.config["run"]["device"], f"{self.source}: run.device")
        dev = resolve_device(device or self.config["run"]["device"])
        built = _preflight.build(self, self.config["run"]["seed"], dev)
        _preflight.fit(self, built)
        _preflight.sanity_check(self, built, dev)
        return variance_head.prepare_stage(self, built)

    def run_dir(self, out: str | Path | None = None) -> tuple[Path, bool]:
        """The run directory and whether it was given (``out``/``run.out``) rather than derived from the name."""
        given = out or self.config["run"]["out"]
        return (Path(given), True) if given else (Path("runs") / Path(self.source).stem, False)

    def resolved(self, data_shape: list[int], vocab_size: int | None, run_dir: Path | None = None,
                 built: Any = None) -> dict[str, Any]:
        """The config as run: defaults, injected shapes, and the versions of everything it names; a data
        file is written relative to ``run_dir`` (so that moving the project folder keeps the run valid);
        with the ``built`` plugins, ``eval.nll``'s estimator and dequantisation as they will run."""
        cfg = {k: dict(v) for k, v in self.config.items() if k != "versions"}
        if "nll" in cfg.get("eval", {}) and built is not None:
            from .likelihoods import resolve_nll_config
            cfg["eval"]["nll"] = resolve_nll_config(self, built.corruption, built.time_type, data_shape)
        quant = self.quantisation()
        if quant is not None:
            cfg["data"]["quantisation"] = quant.to_config()
        for section, kind in plugin_sections().items():
            if kind.injected and "name" in cfg.get(section, {}):
                cfg[section] = {"name": cfg[section]["name"], **self._inject(section, data_shape, vocab_size)}
        if "file" in cfg["data"] and run_dir is not None:
            cfg["data"]["file"] = os.path.relpath(Path(cfg["data"]["file"]).resolve(), run_dir.resolve())
        from . import __version__
        plugins = {f"{s}.{cfg[s]['name']}": self.registry.provider(k.name, cfg[s]["name"]).label
                   for s, k in plugin_sections().items() if "name" in cfg.get(s, {})}
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


# ------------------------------------------------------------------------------------------- resume
def _fixed(cfg: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """``section.key -> value`` for everything that may not change on resume."""
    out: dict[str, Any] = {}
    for section, kind in plugin_sections().items():
        for key, value in (cfg.get(section) or {}).items():
            if key == "file":  # a moved project keeps its data: compared by content (the checkpoint's hash)
                continue
            if key not in kind.injected:
                out[f"{section}.{key}"] = value
    for section, options in (("train", TrainOptions), ("run", RunOptions)):
        for key in fixed_on_resume(options):
            out[f"{section}.{key}"] = (cfg.get(section) or {}).get(key, getattr(options, key))
    return out


def _check_resume(exp: Experiment, run_dir: Path) -> dict[str, Any]:
    """The saved config, when the current experiment may resume it; else a :class:`ConfigError` naming
    every differing key with its old and new value."""
    saved_path = run_dir / "config.yaml"
    saved = load_config(saved_path) if saved_path.is_file() else {}
    before, now = _fixed(saved, run_dir), _fixed(exp.config, None)
    diffs = [f"{k}: {before.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if diffs:
        mutable = [f"train.{k}" for k in schema_of(TrainOptions).params if k not in fixed_on_resume(TrainOptions)]
        raise ConfigError(
            f"--resume: the experiment must match the run it resumes in everything that fixes the trained model "
            f"(corruption, time, model, data, train.ema, run.seed); got {len(diffs)} difference(s) from "
            f"{str(saved_path)!r}: {'; '.join(diffs)}. Change them back, or start a new run. What may change on "
            f"resume: {', '.join(mutable)}, sample, eval and the rest of run.")
    return saved


def _fingerprint(data: Any) -> str:
    """SHA-256 of the training data (shape, dtype and values; a sequence batch's lengths too)."""
    h = hashlib.sha256()
    for t in (getattr(data, "tokens", data), getattr(data, "lengths", None)):
        if t is not None:
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _check_data_identity(saved: dict[str, Any], ckpt: checkpoint.Checkpoint, fingerprint: str, exp: Experiment) -> None:
    want = ckpt.extra.get("data_sha256")
    if want is not None and want != fingerprint:
        raise ConfigError(f"--resume: the training data must be the data the run was trained on; got different "
                          f"data (sha256 {fingerprint[:12]}..., the checkpoint's: {want[:12]}...). Point data "
                          f"at the original data, or start a new run.")
    if want is None and "file" in saved.get("data", {}) and "file" in exp.config["data"] \
            and Path(saved["data"]["file"]).resolve() != Path(exp.config["data"]["file"]).resolve():
        raise ConfigError(f"--resume: data.file must be the file the run was trained on; got "
                          f"{exp.config['data']['file']!r}, the run's: {saved['data']['file']!r}. Point data.file "
                          f"at it, or start a new run.")


def _apply_train_options(trainer: Trainer, train: dict[str, Any]) -> None:
    """After a restore: the optimiser settings of this invocation (they may change on resume; unchanged
    values reproduce the restored ones exactly)."""
    opt, sched = trainer.optimizer, trainer.scheduler
    lr = train.get("lr", TrainOptions.lr)
    sched.base_lrs = [lr] * len(opt.param_groups)
    for group, fn in zip(opt.param_groups, sched.lr_lambdas):
        group["initial_lr"], group["lr"] = lr, lr * fn(sched.last_epoch)
        group["weight_decay"] = train.get("weight_decay", TrainOptions.weight_decay)
        group["betas"] = tuple(train.get("betas", TrainOptions.betas))


# ---------------------------------------------------------------------------------------------- run
def run_experiment(experiment: Experiment | str | Path, *, out: str | Path | None = None, resume: bool = False,
                   overwrite: bool = False, overrides: list[str] | tuple[str, ...] = (),
                   registry: Registry | None = None, sample: bool = True, progress: bool | None = None) -> RunResult:
    """Check, then train (resuming from the newest intact checkpoint if ``resume``), then sample and
    evaluate (``sample``). ``overwrite`` replaces a finished run in an explicit ``out`` instead of refusing."""
    exp = experiment if isinstance(experiment, Experiment) else Experiment.from_file(experiment, overrides, registry)
    run, train_cfg = exp.config["run"], dict(exp.config["train"])
    _validate.check_device(run["device"], f"{exp.source}: run.device")
    d, device = distributed.setup(run["device"])
    try:
        return _run(exp, d, device, run, train_cfg, out, resume, overwrite, sample, progress)
    finally:
        distributed.teardown()


def _claim(exp: Experiment, out: str | Path | None, resume: bool, overwrite: bool) -> _rundir.RunDir:
    target, explicit = exp.run_dir(out)
    source = Path(exp.source)
    experiment = source if source.is_file() else None
    if explicit:
        return _rundir.claim(target, experiment=experiment, resume=resume, overwrite=overwrite)
    for _ in range(100):  # a derived directory: the next free version (another run may take one meanwhile)
        chosen = _rundir.choose(target, resume=resume)
        try:
            return _rundir.claim(chosen, experiment=experiment, resume=resume)
        except ConfigError as exc:
            if resume or "in use by another run" not in str(exc):
                raise
    raise ConfigError(f"run.out: a free versioned run directory must exist; got {target}-* all in use. "
                      f"Pass --out.")  # pragma: no cover - 100 concurrent runs of one experiment


def _run(exp: Experiment, d: distributed.Dist, device: torch.device, run: dict[str, Any], train_cfg: dict[str, Any],
         out: str | Path | None, resume: bool, overwrite: bool, do_sample: bool, progress: bool | None) -> RunResult:
    _seed_globals(run["seed"] + distributed.RANK_SEED_STRIDE * d.rank)  # torch/numpy/python globals per rank
    built = _preflight.build(exp, run["seed"], device)
    _preflight.fit(exp, built)  # a resumed run restores the saved statistics below
    _preflight.sanity_check(exp, built, device)
    built = variance_head.prepare_stage(exp, built)  # train.stage: variance_head: the frozen mean + a new head
    claimed = _claim(exp, out, resume, overwrite) if d.is_main else None
    run_dir = distributed.broadcast(claimed.path if claimed else None, d)
    try:
        return _train_and_sample(exp, d, device, run, train_cfg, run_dir, resume, do_sample, progress, built)
    finally:
        if claimed is not None:
            claimed.release()


def _train_and_sample(exp: Experiment, d: distributed.Dist, device: torch.device, run: dict[str, Any],
                      train_cfg: dict[str, Any], run_dir: Path, resume: bool, do_sample: bool, progress: bool | None,
                      built: _preflight.Built) -> RunResult:
    data, corruption, time_type = built.data, built.corruption, built.time_type
    saved = _check_resume(exp, run_dir) if resume else {}
    ckpts = run_dir / "checkpoints"
    if d.is_main:
        ckpts.mkdir(exist_ok=True)
        checkpoint.clean(ckpts)  # what a save or delete interrupted by a crash left behind
    steps, batch_size = train_cfg.pop("steps"), train_cfg.pop("batch_size")
    variance_head.pop_stage_options(train_cfg)
    distributed.check_batch(batch_size, d)
    params = schema_of(Trainer).params
    # every rank seeds the batch and the noise/time generators alike: each draws the global batch and its
    # noise exactly as one process would, and trains on its own slice (see udm.distributed)
    trainer = Trainer(built.network, corruption, time_type, seed=run["seed"], device=device,
                      **{k: coerce(v, params[k].annotation) for k, v in train_cfg.items()})
    trainer.shard = (d.rank, d.world)
    trainer.loss_fn = variance_head.stage_loss(exp.config["train"]) or trainer.loss_fn
    trainer.loss_network = distributed.wrap(trainer.network, d, device)
    latest = (checkpoint.newest_intact(ckpts, quarantine=True, optimizer=trainer.optimizer)
              if resume and d.is_main else None)
    latest_path = distributed.broadcast(latest.path if latest is not None else None, d)
    if latest is None and latest_path is not None:  # the other ranks read what rank 0 verified
        latest = checkpoint.load_checkpoint(latest_path, optimizer=trainer.optimizer)
    fingerprint = _fingerprint(data)
    log = _runlog.open_log(run["log"], run_dir, d.is_main)
    if latest is not None:
        _check_data_identity(saved, latest, fingerprint, exp)
        _restore(trainer, corruption, latest, d)
        _apply_train_options(trainer, exp.config["train"])
        log.truncate_after(trainer.step)
    extra = {"data_shape": built.data_shape, "data_sha256": fingerprint, "time_encoding": time_type.encoding_fingerprint()}
    try:
        if d.is_main:
            _rundir.atomic_write(run_dir / "config.yaml",
                                 yaml.safe_dump(exp.resolved(built.data_shape, built.vocab, run_dir, built),
                                                sort_keys=False))
        losses, seconds = _train(exp, trainer, corruption, data, steps, batch_size, run, run_dir, log, d, device,
                                 progress, extra)
        result = RunResult(run_dir, trainer.step, losses, seconds=seconds)
        if d.is_main:
            if run["plots"]:
                _artifacts.write_loss_plot(run_dir / "loss.png", run_dir / "metrics.jsonl")
            if do_sample:
                from .sampling import sample_and_evaluate
                net = trainer.ema if trainer.ema is not None else trainer.network
                result.samples, result.metrics = sample_and_evaluate(exp, net, corruption, time_type, data, run_dir,
                                                                     log=log, progress=progress, step=trainer.step,
                                                                     fit_missing=True)
                if "nll" in exp.config["eval"]:
                    from .likelihoods import evaluate_nll
                    nll = evaluate_nll(exp, net, corruption, time_type, run_dir, step=trainer.step, log=log,
                                       progress=progress)
                    result.metrics["nll"] = nll.bits_per_dim if nll.bits_per_dim is not None else nll.nats_per_dim
    except OSError as exc:
        last = checkpoint.latest_checkpoint(ckpts)
        kept = f"the last checkpoint {str(last)!r} is intact" if last else "no checkpoint was written"
        raise TrainingError(f"run directory: writing {exc.filename or str(run_dir)!r} must succeed; got "
                            f"{exc.strerror or exc} (errno {exc.errno}). Free disk space or make the directory "
                            f"writable, then run again with --resume; {kept}.") from None
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


def _restore(trainer: Trainer, corruption: Any, ckpt: checkpoint.Checkpoint, d: distributed.Dist) -> None:
    path = ckpt.path
    if sorted(ckpt.rng) != list(range(d.world)):
        raise ConfigError(f"--resume: the number of processes must match the checkpoint's; got {d.world} now and "
                          f"{len(ckpt.rng)} in {str(path)!r}. Resume with torchrun --nproc_per_node={len(ckpt.rng)}.")
    trainer.load_state_dict(ckpt.trainer)
    checkpoint.set_rng_state(trainer, ckpt.rng[d.rank])
    if callable(getattr(corruption, "load_state_dict", None)):
        corruption.load_state_dict(ckpt.corruption)


def _save(trainer: Trainer, corruption: Any, run: dict[str, Any], run_dir: Path, d: distributed.Dist,
          extra: dict[str, Any]) -> None:
    states = distributed.gather(checkpoint.rng_state(trainer), d)
    if d.is_main:
        checkpoint.save_checkpoint(run_dir / "checkpoints", trainer, corruption=corruption,
                                   rng=dict(enumerate(states)), keep=run["keep"], extra=extra)
    distributed.barrier(d)


def _train(exp: Experiment, trainer: Trainer, corruption: Any, data: torch.Tensor, steps: int, batch_size: int,
           run: dict[str, Any], run_dir: Path, log: _runlog.RunLog, d: distributed.Dist, device: torch.device,
           progress: bool | None, extra: dict[str, Any]) -> tuple[list[float], float]:
    try:
        return _loop(trainer, corruption, data, steps, batch_size, run, run_dir, log, d, device, progress, extra)
    except KeyboardInterrupt:
        last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        kept = f"the last checkpoint is {last.name}" if last else "no checkpoint was written yet"
        raise RunInterrupted(f"interrupted at step {trainer.step} in {str(run_dir)!r}; {kept}, from which a resumed "
                             f"run continues.", run_dir) from None


def _loop(trainer: Trainer, corruption: Any, data: torch.Tensor, steps: int, batch_size: int, run: dict[str, Any],
          run_dir: Path, log: _runlog.RunLog, d: distributed.Dist, device: torch.device,
          progress: bool | None, extra: dict[str, Any]) -> tuple[list[float], float]:
    """The training loop on the *global* batch of ``batch_size`` (each rank trains on its slice)."""
    every, log_every, losses, window = run["checkpoint_every"], run["log_every"], [], []
    start = time.perf_counter()
    with progress_bar(steps, "train", enabled=progress if d.is_main else False, start=trainer.step) as bar:
        while trainer.step < steps:
            try:
                loss = trainer.train_step(trainer.next_batch(data, batch_size))
            except FloatingPointError as exc:
                last = checkpoint.latest_checkpoint(run_dir / "checkpoints")
                kept = f"The last good checkpoint is {str(last)!r}; it is intact" if last else "No checkpoint was written"
                raise TrainingError(f"{exc} {kept}. Fix the cause (train.lr, train.grad_clip and train.warmup may "
                                    f"change on resume), then run again with --resume.") from None
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
                _save(trainer, corruption, run, run_dir, d, extra)
    seconds = time.perf_counter() - start
    trainer.network.eval()
    _save(trainer, corruption, run, run_dir, d, extra)
    return losses, seconds
