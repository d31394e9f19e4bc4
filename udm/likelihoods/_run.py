"""The likelihood of a run: ``eval: {nll: {...}}`` in an experiment and ``udm eval RUN --nll``.

::

    eval: {nll: {estimator: elbo_discrete, n: 1000, steps: 100, variance: large}}

The section's own keys are :class:`NllOptions`; every other key is an option of the named estimator (checked
against its signature, as the ``sample`` section's keys are against the sampler's). The record appended to
``eval.jsonl`` holds the result (:meth:`LikelihoodResult.to_record`) and which data it was computed on; the run's
``config.yaml`` records the estimator and the dequantisation as run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from .. import _rundir
from .._options import Seed
from .._schema import Interval, Schema, schema_of
from ._api import SUPPLIED, Dequantisation, Units, decoding, likelihood, run_variance
from ._result import LikelihoodResult
from ._spec import default_estimator, resolve_estimator

__all__ = ["NllOptions", "nll_schema", "resolve_nll_config", "evaluate_nll", "held_out_data", "eval_run"]


@dataclass(frozen=True)
class NllOptions:
    """``eval.nll``'s own keys.

    ``estimator`` defaults to the corruption's (``elbo_discrete`` for a linear-Gaussian corruption in discrete
    time, ``elbo_continuous`` in continuous time, ``elbo_masked``, ``elbo_deletion``); name it to give its
    options. ``n`` held-out examples (the dataset redrawn with ``run.seed + 1`` when it takes a seed) in batches
    of ``batch_size``; ``seed`` (default ``run.seed``) drives the Monte-Carlo draws; ``units`` and
    ``dequantisation`` as in :func:`udm.likelihood`.
    """

    estimator: str | None = None
    n: Annotated[int, Interval(ge=1)] = 1000
    batch_size: Annotated[int, Interval(ge=1)] = 256
    seed: Seed | None = None
    units: Units = "auto"
    dequantisation: Dequantisation = "auto"


_OWN = tuple(f.name for f in dataclasses.fields(NllOptions))


def nll_schema(registry: Any, body: dict[str, Any]) -> Schema:
    """The keys ``eval.nll`` may hold: :class:`NllOptions`, plus the options of the estimator it names."""
    own = schema_of(NllOptions).params
    name = body.get("estimator")
    if not isinstance(name, str):
        return Schema(own)
    spec = registry.get("estimator", name)
    return Schema({**own, **schema_of(spec.estimate, skip=SUPPLIED).params})


def _split(body: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    body = dict(body or {})
    own = {k: body.pop(k) for k in _OWN if k in body}
    return {**{f.name: f.default for f in dataclasses.fields(NllOptions)}, **own}, body


def resolve_nll_config(exp: Any, corruption: Any, time_type: Any, data_shape: list[int]) -> dict[str, Any]:
    """``eval.nll`` as it will run: the estimator named and the dequantisation decided (what ``config.yaml``
    records)."""
    own, options = _split(exp.config["eval"].get("nll"))
    name = own["estimator"] or default_estimator(corruption, time_type, exp.registry)
    spec = resolve_estimator(name, corruption, exp.registry)
    mode, _ = decoding(spec, _Shape(("n", *data_shape)), exp.quantisation(), own["dequantisation"], own["units"],
                       "likelihood")
    return {**own, "estimator": name, "dequantisation": mode, **options}


@dataclass
class _Shape:
    """Stands in for the data where only its shape matters (image or not, and for the messages)."""

    shape: tuple[Any, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def held_out_data(exp: Any, n: int) -> tuple[Any, str]:
    """``n`` examples to score and what they are: the dataset redrawn with seed + 1 when it takes a seed (new
    examples for generated data; a reshuffle for a fixed set such as ``digits``), else the run's data."""
    from ..sampling import _reference

    body = exp.config["data"]
    takes_seed = "name" in body and "seed" in schema_of(exp.registry.get("dataset", body["name"])).params
    what = f"dataset {body['name']!r} drawn with seed {int(body.get('seed') or 0) + 1}" if takes_seed else \
        "the run's training data (the dataset takes no seed)"
    return _reference(exp, None, n), what


def evaluate_nll(exp: Any, network: Any, corruption: Any, time_type: Any, run_dir: str | Path, *, step: int,
                 log: Any = None, progress: bool | None = None) -> LikelihoodResult:
    """Score ``eval.nll`` on held-out data and append the record to ``eval.jsonl``."""
    own, options = _split(exp.config["eval"].get("nll"))
    seed = own["seed"] if own["seed"] is not None else exp.config["run"]["seed"]
    data, what = held_out_data(exp, own["n"])
    named = options.get("variance") if isinstance(options.get("variance"), str) else None
    network, options, family = run_variance(network, options, run_dir, corruption, time_type, step, "eval.nll")
    result = likelihood(network, data, own["estimator"], corruption=corruption, time_type=time_type,
                        quantisation=exp.quantisation(), dequantisation=own["dequantisation"], units=own["units"],
                        batch_size=own["batch_size"], seed=seed, registry=exp.registry, progress=progress,
                        family_options=family, **options)
    result.settings["data"] = what
    if named is not None:
        result.settings["variance"] = named  # the name, not the source's type
    record = {"step": step, "nll": result.to_record()}
    if log is not None:
        log.write(record)
    _rundir.append_line(Path(run_dir) / "eval.jsonl", json.dumps(record))
    return result


def eval_run(run_dir: str | Path, *, estimator: str | None = None, n: int | None = None, seed: int | None = None,
             overrides: list[str] | tuple[str, ...] = (), registry: Any = None,
             progress: bool | None = None) -> LikelihoodResult:
    """``udm eval RUN --nll``: the likelihood of held-out data under a trained run's newest intact checkpoint,
    with the run's ``eval.nll`` settings (``--estimator``, ``--n``, ``--seed`` and ``--set eval.nll.KEY=VALUE``
    replace them); the record is appended to the run's ``eval.jsonl``."""
    from ..sampling import load_trained_run

    def edit(cfg: dict[str, Any]) -> dict[str, Any]:
        nll = dict(cfg.setdefault("eval", {}).get("nll") or {})
        if estimator is not None and estimator != nll.get("estimator"):
            nll = {k: v for k, v in nll.items() if k in _OWN} | {"estimator": estimator}  # old options may not apply
        nll.update({k: v for k, v in (("n", n), ("seed", seed)) if v is not None})
        cfg["eval"]["nll"] = nll
        return cfg

    run = load_trained_run(run_dir, "udm eval", edit=edit, overrides=overrides, registry=registry)
    return evaluate_nll(run.exp, run.network, run.corruption, run.time_type, Path(run_dir), step=run.step,
                        progress=progress)
