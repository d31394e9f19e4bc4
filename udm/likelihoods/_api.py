"""``udm.likelihood``: the NLL of data under a trained model (or a run directory), by a registered estimator.

How the number is read is declared, never guessed (docs/math.md, "Likelihoods"):

* token data: a probability by construction; bits per token.
* continuous data with a declared :class:`udm.Quantisation` (``data.quantisation`` or the dataset's own):
  a probability of the levels, through a discretised decoder (the ELBOs) or uniform dequantisation
  (``ode``, or on request): bits per dimension.
* continuous data without one: a density; nats per dimension only. Bits/dim of image data without a declared
  quantisation is an error that names the option: a density of discrete values is unbounded, which is why
  such numbers go negative.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch

from .._progress import progress_bar
from .._schema import schema_of
from .._validate import check_data_shape, check_keys
from ..denoiser import Denoiser
from ..errors import ConfigError
from ..quantisation import Quantisation
from ._gaussian import RUN_VARIANCES
from ._result import BatchNll, LikelihoodResult, summarise
from ._spec import Context, EstimatorSpec, default_estimator, resolve_estimator

__all__ = ["likelihood", "SUPPLIED", "Dequantisation", "Units", "decoding", "estimator_options"]

#: parameters of an estimator's ``estimate`` that udm passes itself (never options)
SUPPLIED = ("ctx", "x0", "generator")
Dequantisation = Literal["auto", "discretised", "uniform", "none"]
Units = Literal["auto", "bits", "nats"]
_QUANT_FIX = ("Declare the data's levels (data.quantisation: {bins: 256, range: [-1, 1]} in YAML, "
              "quantisation=udm.Quantisation(256, (-1, 1)) in Python)")


def estimator_options(spec: EstimatorSpec, options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` checked against the estimator's keyword parameters, its defaults filled in."""
    schema = schema_of(spec.estimate, skip=SUPPLIED)
    check_keys(where, options, schema, python=True)
    return {**{k: p.default for k, p in schema.params.items() if not p.required}, **options}


def decoding(spec: EstimatorSpec, data: Any, quantisation: Quantisation | None, dequantisation: str, units: str,
             where: str = "udm.likelihood") -> tuple[str, str]:
    """(dequantisation as run, kind): ``tokens``/``discretised``/``uniform`` give a probability (``discrete``),
    ``none`` a ``density``. Raises where the request cannot be met."""
    if spec.decoders == ("tokens",):
        if dequantisation not in ("auto", "none"):
            raise ConfigError(f"{where}: dequantisation must be 'auto' for token data (a probability already); got "
                              f"{dequantisation!r}. Remove it.")
        return "tokens", "discrete"
    if quantisation is None:
        if dequantisation in ("discretised", "uniform"):
            raise ConfigError(f"{where}: dequantisation {dequantisation!r} must come with the data's quantisation; got "
                              f"none declared. {_QUANT_FIX}.")
        image = getattr(data, "ndim", 0) >= 4
        if units == "bits" or (units == "auto" and image):
            raise ConfigError(
                f"{where}: bits per dimension must come with the data's quantisation; got none declared for data "
                f"shaped {tuple(data.shape)}. {_QUANT_FIX}, or ask for nats per dimension of the density "
                f"(units: nats), which is unbounded for discrete data (docs/math.md, \"Likelihoods\").")
        return "none", "density"
    if dequantisation == "auto":
        dequantisation = "discretised" if "discretised" in spec.decoders else "uniform"
    if dequantisation == "discretised" and "discretised" not in spec.decoders:
        raise ConfigError(f"{where}: dequantisation must be one of {', '.join(('uniform', 'none'))} for estimator "
                          f"{spec.name!r} (it scores a density); got 'discretised'. Use 'uniform' or an ELBO.")
    if dequantisation == "none" and units == "bits":
        raise ConfigError(f"{where}: units 'bits' must come with a dequantisation; got dequantisation 'none' (a "
                          f"density of discrete data). Use dequantisation 'auto'.")
    return dequantisation, ("density" if dequantisation == "none" else "discrete")


def _from_run(run: str | Path, registry: Any) -> tuple[Any, Any, Any, Any, Quantisation | None, Any, int]:
    from ..sampling import load_trained_run

    r = load_trained_run(run, "udm.likelihood", registry=registry)
    return r.exp, r.network, r.corruption, r.time_type, r.exp.quantisation(), r.exp.registry, r.step


def run_variance(network: Any, options: dict[str, Any], run_dir: str | Path, corruption: Any, time_type: Any,
                 step: int, where: str) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """(network, options, family_options) for scoring a run: a variance the run provides by name (a table
    ``udm fit-variance`` fitted for the estimator's grid, or the run's SN/NPR head) becomes the variance source,
    and a variance-head network is scored through its mean network unless its head is asked for."""
    from ..variance_head import VarianceHeadNetwork
    from ..variance_store import variance_for_run

    name = options.get("variance")
    if not (isinstance(name, str) and name in RUN_VARIANCES):
        mean = network.mean_network if isinstance(network, VarianceHeadNetwork) else network
        return mean, options, None
    steps = options.get("steps") or int(getattr(time_type, "steps", 1000))
    net, source = variance_for_run(name, Path(run_dir), network=network, corruption=corruption, time_type=time_type,
                                   step=step, steps=steps, spacing=options.get("spacing", "uniform"),
                                   where=f"{where}.variance")
    if getattr(source, "uses_head", False):  # the head's Sigma comes with each prediction
        return net, {**options, "variance": "model"}, {"variance": source}
    return net, {**options, "variance": source}, None


def held_out(exp: Any, n: int) -> Any:
    """``n`` held-out examples of a run's data: the dataset redrawn with seed + 1 when it takes a seed (what the
    sample metrics compare against), else the first n of the data."""
    from ..sampling import _reference

    return _reference(exp, None, n)


def _check_model(model: Any, corruption: Any, time_type: Any) -> None:
    if corruption is None or time_type is None:
        raise ConfigError("udm.likelihood: corruption and time_type must be given with a model; got "
                          f"corruption={corruption!r}, time_type={time_type!r}. Pass both, or a run directory.")
    if not (isinstance(model, torch.nn.Module) or callable(model) or callable(getattr(model, "predict", None))):
        raise ConfigError(f"udm.likelihood: model_or_run must be a network, a denoiser or a run directory; got "
                          f"{type(model).__name__}. Pass an nn.Module, a callable (x_t, t, generator) -> x0_hat or a "
                          f"path.")


def _dequantise(x: torch.Tensor, q: Quantisation, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x + step (u - 1/2), u ~ U[0, 1)^d, and the term -d log(step) per example (nats)."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    d = x[0].numel()
    return x.double() + q.step * (u - 0.5), torch.full((x.shape[0],), -d * math.log(q.step), dtype=torch.float64)


def likelihood(model_or_run: Any, data: Any = None, estimator: str | EstimatorSpec | None = None, *,
               corruption: Any = None, time_type: Any = None, quantisation: Quantisation | dict | None = None,
               dequantisation: Dequantisation = "auto", units: Units = "auto", n: int | None = None,
               batch_size: int = 256, seed: int = 0, generator: torch.Generator | None = None, registry: Any = None,
               progress: bool | None = None, family_options: dict[str, Any] | None = None,
               **options: Any) -> LikelihoodResult:
    """The negative log-likelihood of ``data`` under a model, per dimension, with its standard error and terms.

    Args:
        model_or_run: a trained network (wrapped in :class:`udm.Denoiser`), a denoiser (``predict`` or a callable
            ``(x_t, t, generator) -> x0_hat``, e.g. an oracle of :mod:`udm.testing`), or a run directory (its
            EMA weights, corruption, time type, data quantisation and, without ``data``, held-out data).
        data: ``(n, ...)`` examples (a tensor or :class:`udm.Sequences`).
        estimator: a registered estimator (``elbo_discrete``, ``elbo_continuous``, ``ode``, ``elbo_masked``,
            ``elbo_deletion``; ``udm plugins`` lists them); default: the corruption's for its time type.
        quantisation: the data's levels (a run's declaration by default); see the module docstring.
        dequantisation: ``auto`` (a discretised decoder when the estimator has one, else uniform
            dequantisation; nothing for densities and tokens), ``discretised``, ``uniform``, or ``none`` (score
            the density even of quantised data).
        units: ``bits`` insists on a probability (an error without a quantisation), ``nats`` allows a density
            of image data, ``auto`` reports bits/dim whenever the number is a probability.
        n: use the first ``n`` examples (a run's held-out set: 1000 by default).
        batch_size, seed, generator: batching and the Monte-Carlo draws (``generator`` overrides ``seed``).
        options: the estimator's own options (``steps``, ``variance``, ``draws``, ``solver``, ``probes``, ...).
    """
    where = "udm.likelihood"
    step = named = None
    if isinstance(model_or_run, (str, Path)):
        if corruption is not None or time_type is not None:
            raise ConfigError(f"{where}: corruption and time_type must not be given with a run directory; got "
                              f"them with {str(model_or_run)!r}. The run's own are used.")
        exp, model, corruption, time_type, declared, registry, step = _from_run(model_or_run, registry)
        named = options.get("variance") if isinstance(options.get("variance"), str) else None
        model, options, family = run_variance(model, options, model_or_run, corruption, time_type, step, where)
        family_options = {**(family_options or {}), **(family or {})}
        quantisation = quantisation if quantisation is not None else declared
        data = data if data is not None else held_out(exp, n or 1000)
    else:
        _check_model(model_or_run, corruption, time_type)
        model = model_or_run
    if data is None:
        raise ConfigError(f"{where}: data must be given with a model; got None. Pass the held-out examples.")
    check_data_shape(data, f"{where}: data")
    if isinstance(quantisation, dict):
        quantisation = Quantisation.from_config(quantisation, f"{where}: quantisation")
    data = data[:n] if n is not None else data
    spec = resolve_estimator(estimator if estimator is not None else default_estimator(corruption, time_type, registry),
                             corruption, registry)
    opts = estimator_options(spec, options, where)
    mode, kind = decoding(spec, data, quantisation, dequantisation, units, where)
    if mode in ("discretised", "uniform"):
        quantisation.check(data, f"{where}: data")
    if isinstance(model, torch.nn.Module):
        params = [*model.parameters(), *model.buffers()]
        device = params[0].device if params else torch.device("cpu")
        dtype = next((p.dtype for p in params if p.is_floating_point()), None)
        denoiser = Denoiser(model.eval(), corruption, time_type, **(family_options or {}))
    else:
        device = generator.device if generator is not None else torch.device("cpu")
        dtype, denoiser = None, model
    ctx = Context(corruption, time_type, denoiser, quantisation if mode == "discretised" else None, dtype)
    opts = spec.resolve(ctx, opts) if spec.resolve is not None else opts
    gen = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
    total = len(data)
    batches: list[BatchNll] = []
    with torch.no_grad(), progress_bar(total, f"nll {spec.name}", enabled=progress) as bar:
        for start in range(0, total, batch_size):
            x = data[start:start + batch_size].to(device)
            deq = None
            if mode == "uniform":
                x, deq = _dequantise(x, quantisation, gen)
            out = spec.estimate(ctx, x, gen, **opts)
            if deq is not None:
                out.dequantisation = deq.to(out.prior.device)
            batches.append(out)
            bar.update(len(x))
    settings = {**{k: v for k, v in opts.items() if _plain(v)},
                **{k: getattr(v, "__name__", type(v).__name__) for k, v in opts.items() if not _plain(v)},
                "seed": seed if generator is None else None, "batch_size": batch_size, "units": units,
                "quantisation": quantisation.to_config() if quantisation is not None and mode != "tokens" else None}
    if step is not None:
        settings["checkpoint_step"] = step
        if named is not None:
            settings["variance"] = named
    return summarise(spec.name, batches, bound=spec.bound, kind=kind, dequantisation=mode, settings=settings)


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))
