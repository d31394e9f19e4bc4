"""q_theta's variance for a run directory: fitted tables kept in the run, and the variance a name selects.

``udm fit-variance RUN --source analytic --samples N`` writes ``RUN/variance/analytic.safetensors`` (the times,
the table and its diagnostics) and ``RUN/variance/analytic.json`` (what it was fitted for: the corruption, the
time type, the checkpoint step, the grid, the samples, and the SHA-256 of the tensors), each atomically. A
table is used only for what it was fitted for: another corruption or schedule, another checkpoint, or a
sampling time it does not hold (unless it is a dense, interpolated table) is refused with the reason and the
command that fits the right one.

Names (``sample.variance``, ``udm sample --variance``): ``analytic``/``residual`` (fitted tables), ``small``/
``large`` (closed forms, nothing to fit), ``sn``/``npr`` (the head of a ``train.stage: variance_head`` run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save as save_bytes

from . import _rundir
from .errors import ConfigError
from .variance import CLOSED_FORMS, ClosedFormVariance, VarianceTable, check_variance_name
from .variance_fit import FIT_SOURCES, VarianceFit, fit_variance

__all__ = ["FOLDER", "save_fit", "load_fit", "fit_run", "variance_for_run", "check_head_name",
           "TABLE_SOURCES"]

FOLDER = "variance"
#: the names whose variance is a table fitted into the run (``exact`` needs an oracle: Python only)
TABLE_SOURCES = tuple(s for s in FIT_SOURCES if s != "exact")
_TENSORS = ("raw", "stderr", "bound", "gamma", "data_variance")


def check_head_name(name: str, train: dict[str, Any], where: str) -> None:
    """``sn``/``npr`` need a run whose ``train`` section trains that head (checked before training starts)."""
    if name in ("sn", "npr") and (train.get("stage") != "variance_head" or train.get("head") != name):
        raise ConfigError(f"{where}: variance {name!r} needs train.stage: variance_head with train.head: {name}; got "
                          f"stage {train.get('stage', 'mean')!r}, head {train.get('head')!r}. Train the head as a "
                          f"second stage (train: {{stage: variance_head, head: {name}, init: <first run>}}), or "
                          f"sample with analytic.")


def _paths(run_dir: Path, source: str) -> tuple[Path, Path]:
    return run_dir / FOLDER / f"{source}.safetensors", run_dir / FOLDER / f"{source}.json"


def _grid_flags(grid: dict[str, Any]) -> str:
    if "dense" in grid:
        return f"--dense {grid['dense']}"
    if "steps" in grid:
        return f"--steps {grid['steps']} --spacing {grid['spacing']}"
    return ""


def _refit(run_dir: Path, source: str, samples: int = 1000, flags: str = "") -> str:
    return f"udm fit-variance {run_dir} --source {source} --samples {samples}" + (f" {flags}" if flags else "")


def save_fit(run_dir: str | Path, fit: VarianceFit, *, step: int, corruption: Any, time_type: Any) -> Path:
    """Write ``fit`` into ``run_dir/variance/`` (safetensors + JSON, each atomically); returns the tensors' path."""
    run_dir = Path(run_dir)
    folder = run_dir / FOLDER
    if folder.is_symlink():
        raise ConfigError(f"udm fit-variance: {str(folder)!r} must not be a symbolic link; got a link to "
                          f"{str(folder.readlink())!r}. Remove the link; udm does not write through links.")
    folder.mkdir(exist_ok=True)
    tensors = {"times": fit.table.times, "values": fit.table.values}
    tensors |= {"upper": fit.table.upper} if fit.table.upper is not None else {}
    tensors |= {k: getattr(fit, k) for k in _TENSORS if getattr(fit, k) is not None}
    raw = save_bytes({k: v.detach().to(torch.float64).cpu().contiguous() for k, v in tensors.items()})
    from . import __version__
    meta = {"source": fit.source, "samples": fit.samples, "per_coefficient": fit.per_coefficient,
            "interpolate": fit.table.interpolate, "grid": fit.grid, "checkpoint_step": int(step),
            "corruption": repr(corruption), "time": repr(time_type), "flagged": fit.flagged, "udm": __version__,
            "sha256": hashlib.sha256(raw).hexdigest()}
    st_path, json_path = _paths(run_dir, fit.source)
    _rundir.atomic_write(st_path, raw)
    _rundir.atomic_write(json_path, json.dumps(meta, indent=1) + "\n")
    return st_path


def load_fit(run_dir: str | Path, source: str, where: str) -> tuple[VarianceFit, dict[str, Any]]:
    """The table ``source`` fitted into ``run_dir`` and its metadata; a clear error naming the command that fits
    it when it is missing or damaged."""
    run_dir = Path(run_dir)
    st_path, json_path = _paths(run_dir, source)
    if not st_path.is_file() or not json_path.is_file():
        raise ConfigError(f"{where}: variance {source!r} must be fitted on this run first; got no {source} table in "
                          f"{str(run_dir / FOLDER)!r}. Fit it with `{_refit(run_dir, source)}` (add --steps K or "
                          f"--dense M for the grid).")
    try:
        meta = json.loads(_rundir.read_text_nofollow(json_path))
        raw = st_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise ValueError("the tensors do not match the checksum in the JSON")
        t = load_bytes(raw)
    except (ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ConfigError(f"{where}: the variance table {str(st_path)!r} must be intact; got {exc}. Refit it with "
                          f"`{_refit(run_dir, source)}`.") from None
    table = VarianceTable(t["times"], t["values"], interpolate=bool(meta["interpolate"]), upper=t.get("upper"))
    fit = VarianceFit(meta["source"], table, t["raw"], t["stderr"], t["bound"], t.get("gamma"), int(meta["samples"]),
                      bool(meta["per_coefficient"]), t["data_variance"], meta["grid"])
    return fit, meta


def _check_fitted_for(meta: dict[str, Any], run_dir: Path, where: str, corruption: Any, time_type: Any,
                      step: int) -> None:
    """Refuse a table fitted for another corruption/schedule, time type or checkpoint."""
    again = f"Refit it with `{_refit(run_dir, meta['source'], meta['samples'], _grid_flags(meta['grid']))}`."
    for what, saved, now in (("corruption (and its schedule)", meta["corruption"], repr(corruption)),
                             ("time type", meta["time"], repr(time_type))):
        if saved != now:
            raise ConfigError(f"{where}: variance table {meta['source']!r} must be fitted for the {what} being "
                              f"sampled; got a table fitted for {saved}, but the run samples with {now}. {again}")
    if int(meta["checkpoint_step"]) != int(step):
        raise ConfigError(f"{where}: variance table {meta['source']!r} must be fitted on the checkpoint being sampled; "
                          f"got a table fitted at step {meta['checkpoint_step']}, the checkpoint is step {step}. "
                          f"{again}")


def _check_covers(fit: VarianceFit, meta: dict[str, Any], grid: torch.Tensor, run_dir: Path, where: str,
                  grid_desc: str, flags: str) -> None:
    if fit.table.interpolate:
        return
    times = fit.table.times
    want = grid[grid > 0]
    missing = [float(t) for t in want if not bool(((times - t).abs() <= 1e-9).any())]
    if missing:
        shown = ", ".join(f"{t:.4g}" for t in missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ConfigError(f"{where}: variance table {fit.source!r} must be fitted on the sampling grid; got a table "
                          f"fitted for {json.dumps(meta['grid'])}, which lacks {len(missing)} of the {len(want)} times "
                          f"of the grid ({grid_desc}: t = {shown}). Refit it with "
                          f"`{_refit(run_dir, fit.source, fit.samples, flags)}`, or fit a dense table (--dense M) that "
                          f"serves every grid.")


def fit_run(run_dir: str | Path, *, source: str = "analytic", samples: int = 1000, steps: int | None = None,
            spacing: str | None = None, dense: int | None = None, per_coefficient: bool = False,
            batch_size: int = 1000, seed: int = 0, overrides: list[str] | tuple[str, ...] = (),
            progress: bool | None = None, registry: Any = None) -> tuple[VarianceFit, Path]:
    """``udm fit-variance``: fit ``source`` on the trained run's newest intact checkpoint (EMA weights) and its
    training data, on the run's sampling grid (``sample.steps``/``spacing``; or ``steps``/``spacing``, or a
    ``dense`` grid), and write it into the run. Returns the fit and the written file."""
    from .sampling import load_trained_run

    where = "udm fit-variance"
    if source not in TABLE_SOURCES:
        raise ConfigError(f"{where}: --source must be one of {', '.join(TABLE_SOURCES)}; got {source!r}. small/large "
                          f"are closed forms (nothing to fit), sn/npr a trained head (train.stage: variance_head), "
                          f"exact needs an oracle (udm.fit_variance(..., oracle=) in Python).")
    run = load_trained_run(run_dir, where, overrides=overrides, registry=registry)
    check_variance_name(source, run.corruption, where)
    cfg = run.exp.config["sample"]
    if dense is None and steps is None:
        steps = cfg.get("steps")
        if cfg.get("spacing") == "optimal" or steps is None:
            raise ConfigError(f"{where}: the grid must be given when the run samples with spacing 'optimal' or a "
                              f"budget (nfe); got neither --steps nor --dense. Pass --dense M (spacing 'optimal' "
                              f"chooses its steps from a dense table) or --steps K.")
    spacing = spacing or (cfg.get("spacing", "uniform") if steps is not None else "uniform")
    data = run.exp.build_data()
    device = next(run.network.parameters()).device
    fit = fit_variance(run.network, run.corruption, run.time_type, data.to(device), source=source,
                       steps=steps, spacing=spacing, dense=dense, samples=samples, batch_size=batch_size,
                       per_coefficient=per_coefficient, generator=torch.Generator().manual_seed(seed),
                       progress=progress)
    path = save_fit(run_dir, fit, step=run.step, corruption=run.corruption, time_type=run.time_type)
    return fit, path


@dataclass
class _Request:
    """What resolving a variance name for a run needs."""

    name: str
    run_dir: Path
    mean: torch.nn.Module  #: the mean network
    head: Any  #: the run's :class:`~udm.variance_head.VarianceHeadNetwork`, or ``None``
    corruption: Any
    time_type: Any
    step: int
    steps: int
    spacing: str
    where: str
    data: torch.Tensor | None
    progress: bool | None


def _no_optimal(req: _Request) -> None:
    if req.spacing == "optimal":
        raise ConfigError(f"{req.where}: spacing 'optimal' needs a fitted table (variance analytic or residual); got "
                          f"variance {req.name!r}. Use another spacing with it.")


def _from_head(req: _Request) -> tuple[torch.nn.Module, Any]:
    from .variance_head import HeadVariance

    if req.head is None or req.head.kind != req.name:
        got = f"a {req.head.kind!r} head" if req.head is not None else "a run without a variance head"
        raise ConfigError(f"{req.where}: variance {req.name!r} needs a run trained with train.stage: variance_head and "
                          f"head: {req.name}; got {got}. Train the head as a second stage (train: {{stage: "
                          f"variance_head, head: {req.name}, init: {req.run_dir}}}).")
    _no_optimal(req)
    return req.head, HeadVariance.of(req.head, req.corruption)


def _closed_form(req: _Request) -> tuple[torch.nn.Module, Any]:
    _no_optimal(req)
    return req.mean, ClosedFormVariance(req.corruption, req.name)


def _fitted(req: _Request) -> tuple[torch.nn.Module, Any]:
    """The run's table for ``req.name``, checked against what is sampled; fitted now when ``req.data`` is given."""
    optimal = req.spacing == "optimal"
    dense = getattr(req.time_type, "steps", 200) if optimal else None
    flags = f"--dense {dense}" if optimal else f"--steps {req.steps} --spacing {req.spacing}"
    try:
        fit, meta = load_fit(req.run_dir, req.name, req.where)
        _check_fitted_for(meta, req.run_dir, req.where, req.corruption, req.time_type, req.step)
        if not optimal:
            grid = req.time_type.grid(req.steps, spacing=req.spacing, corruption=req.corruption)
            _check_covers(fit, meta, grid, req.run_dir, req.where, f"{req.steps} {req.spacing} steps", flags)
        elif not fit.table.interpolate:
            raise ConfigError(f"{req.where}: spacing 'optimal' needs a dense variance table; got {req.name!r} fitted "
                              f"for {json.dumps(meta['grid'])}. Refit it with "
                              f"`{_refit(req.run_dir, req.name, fit.samples, flags)}`.")
    except ConfigError:
        if req.data is None:
            raise
        fit = fit_variance(req.mean, req.corruption, req.time_type, req.data, source=req.name, dense=dense,
                           steps=None if optimal else req.steps, spacing="uniform" if optimal else req.spacing,
                           progress=req.progress)
        save_fit(req.run_dir, fit, step=req.step, corruption=req.corruption, time_type=req.time_type)
    return req.mean, fit.table


#: variance name -> how a run provides it
_RESOLVERS = {"sn": _from_head, "npr": _from_head, **{n: _closed_form for n in CLOSED_FORMS},
              **{n: _fitted for n in TABLE_SOURCES}}


def variance_for_run(name: str | None, run_dir: Path, *, network: torch.nn.Module, corruption: Any, time_type: Any,
                     step: int, steps: int, spacing: str, where: str, data: torch.Tensor | None = None,
                     progress: bool | None = None) -> tuple[torch.nn.Module, Any]:
    """(the network to sample with, q_theta's variance source) for the variance ``name`` of a run.

    ``data`` given (``udm run``, right after training): a missing or stale table is fitted now (1000 samples,
    on the sampling grid, or dense for spacing 'optimal') and written into the run."""
    from .variance_head import VarianceHeadNetwork

    head = network if isinstance(network, VarianceHeadNetwork) else None
    mean = head.mean_network if head is not None else network
    if name is None:
        if spacing == "optimal":
            raise ConfigError(f"{where}: spacing 'optimal' needs a fitted variance (sample.variance: analytic or "
                              f"residual); got none. Set sample.variance (--variance analytic).")
        return mean, None
    check_variance_name(name, corruption, where)
    return _RESOLVERS[name](_Request(name, Path(run_dir), mean, head, corruption, time_type, step, steps, spacing,
                                     where, data, progress))
