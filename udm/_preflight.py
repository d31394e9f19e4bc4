"""Before any training step: load and check the data, build every plugin, and run the experiment once
on two examples — a training loss and two steps of the configured sampler.

This is what ``udm check`` does after the schema check, and what ``udm run`` does before it touches
the run directory, so that a sampler the corruption cannot run, a sampler option out of range, an
unknown grid spacing, bad ``family_options``, data of the wrong kind or shape, or a model that does not
fit the data fail in seconds with exit code 2, not after the training they would have wasted (the
same idea as Lightning's sanity-check steps). It changes nothing: the network's mode, weights and
every global RNG state are restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import _validate
from .batch import batch_size, example_shape, is_parts, map_parts, rows, shape_for, to_device
from ._options import check_draws_variance, sampler_own_keys
from .errors import ConfigError, UdmError

__all__ = ["Built", "build", "fit", "sanity_check", "SANITY_BATCH", "SANITY_STEPS"]

#: examples and sampler steps of the sanity run
SANITY_BATCH, SANITY_STEPS = 2, 2


@dataclass
class Built:
    """Everything an experiment builds before training."""

    data: Any  #: ``(n, ...)`` tensor or :class:`udm.Sequences` (or a mapping part -> one of them)
    data_shape: Any  #: per-example shape ``list[int]`` (a mapping of them for data made of parts)
    vocab: Any  #: inferred from integer data (max id + 1), else ``None`` (a mapping of them for parts)
    corruption: Any
    time_type: Any
    network: torch.nn.Module


def _data_where(exp: Any) -> str:
    body = exp.config["data"]
    return f"{exp.source}: data.file {body['file']!r}" if "file" in body else f"{exp.source}: data {body['name']!r}"


def build(exp: Any, seed: int, device: torch.device) -> Built:
    """Load and check the data, then build the corruption, time type and network (on ``device``)."""
    where = _data_where(exp)
    data = exp.build_data()
    declared = exp.registry.get("corruption", exp.config["corruption"]["name"])
    _validate.check_data(data, declared, where)
    quant = exp.quantisation()
    if quant is not None:  # declared levels (data.quantisation or the dataset's own): the data must fit them
        if not (isinstance(data, torch.Tensor) and data.is_floating_point()):
            raise ConfigError(f"{exp.source}: data.quantisation: the data must be continuous (a float tensor) to be "
                              f"quantised; got {getattr(data, 'dtype', type(data).__name__)}. Remove quantisation "
                              f"for token data.")
        quant.check(data)
    vocab = map_parts(_vocab, data)
    data_shape = example_shape(data)
    corruption, time_type, network = exp.build(data_shape, vocab, seed)
    if is_parts(data) or getattr(corruption, "data_kind", None) != getattr(declared, "data_kind", None):
        _validate.check_data(data, corruption, where)  # what the built instance takes: its parts, its encoder's kind
    _validate.check_expectations(network, corruption, time_type, f"{exp.source}: model")
    return Built(data, data_shape, vocab, corruption, time_type, network.to(device))


def _vocab(data: Any) -> int | None:
    """max id + 1 of integer data, else ``None``."""
    tokens = getattr(data, "tokens", data)
    return int(tokens.max()) + 1 if not tokens.is_floating_point() and tokens.numel() else None


def fit(exp: Any, b: Built) -> None:
    """Fit the corruption's statistics on the data (a resumed run restores the saved ones afterwards)."""
    if callable(getattr(b.corruption, "fit", None)):
        _attempt(f"{exp.source}: corruption", "fit the corruption's statistics on the data",
                 lambda: b.corruption.fit(b.data), "Check that the data suits the corruption")


def sanity_check(exp: Any, b: Built, device: torch.device) -> None:
    """A training loss on two examples and two steps of the configured sampler (see the module docstring)."""
    from .api import resolve_sampler, resolve_steps, sample
    from .samplers import resolve_corrector
    from .losses import diffusion_loss

    cfg, src = exp.config["sample"], exp.source
    options = {k: v for k, v in cfg.items() if k not in sampler_own_keys()}
    if cfg.get("variance") is not None:  # a variance needs a linear-Gaussian corruption (udm.variance_store)
        from .variance import check_variance_name
        from .variance_store import check_head_name
        check_variance_name(cfg["variance"], b.corruption, f"{src}: sample.variance")
        check_head_name(cfg["variance"], exp.config["train"], f"{src}: sample.variance")
    if cfg["spacing"] == "optimal":  # chosen from the variance fitted after training: check the rest on a uniform grid
        if cfg.get("variance") not in ("analytic", "residual"):
            raise ConfigError(f"{src}: sample.spacing: 'optimal' must come with a fitted variance (sample.variance: "
                              f"analytic or residual); got variance {cfg.get('variance')!r}. Set sample.variance.")
        cfg = {**cfg, "spacing": "uniform"}
    check_draws_variance(cfg, src)
    steps = cfg.get("steps")
    corrector = resolve_corrector(cfg.get("corrector"), b.corruption, exp.registry, where=f"{src}: sample")
    if cfg.get("nfe") is not None:  # a budget of model calls sets the steps
        spec = _attempt(f"{src}: sample", f"resolve sampler {cfg['sampler']!r}",
                        lambda: resolve_sampler(cfg["sampler"], b.corruption, exp.registry, options),
                        "Choose a sampler the corruption supports")
        steps = resolve_steps(spec, steps, cfg["nfe"], options, where=f"{src}: sample", corrector=corrector)
    if "nll" in exp.config["eval"]:  # the likelihood's estimator must suit the corruption and the data
        from .likelihoods import resolve_nll_config
        _attempt(f"{src}: eval.nll", "resolve the likelihood estimator",
                 lambda: resolve_nll_config(exp, b.corruption, b.time_type, b.data_shape),
                 "Choose an estimator the corruption supports")
    x0 = to_device(rows(b.data, torch.arange(min(SANITY_BATCH, batch_size(b.data)))), device)
    shape = shape_for(batch_size(x0), b.data_shape)
    g = torch.Generator(device=device).manual_seed(0)
    _validate.check_sample_args(b.network, b.corruption, b.time_type, shape=shape,
                                sampler=cfg["sampler"], steps=steps, spacing=cfg["spacing"], generator=g,
                                family_options=cfg.get("family_options"), options=options, registry=exp.registry,
                                where=f"{src}: sample")
    training = b.network.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        try:
            b.network.eval()
            _attempt(f"{src}: train", "compute a training loss on 2 examples before training starts",
                     lambda: diffusion_loss(b.network, b.corruption, b.time_type, x0, g),
                     "Check that the data, corruption and model fit together (shape, dtype, vocabulary)")
            _attempt(f"{src}: sample.steps", "give a valid sampling grid",
                     lambda: b.time_type.grid(steps, spacing=cfg["spacing"], corruption=b.corruption),
                     "Check sample.steps and sample.spacing against the time type")
            _attempt(f"{src}: sample", f"run sampler {cfg['sampler']!r} for {SANITY_STEPS} steps on the untrained "
                     f"network", lambda: sample(
                         b.network, b.corruption, b.time_type, shape=shape,
                         sampler=cfg["sampler"], steps=min(steps, SANITY_STEPS), spacing=cfg["spacing"],
                         generator=g, registry=exp.registry, clamp=cfg["clamp"],
                         family_options=cfg.get("family_options"), corrector=corrector, **options),
                     "Check the sample section against the sampler's options")
        finally:
            b.network.train(training)


def _attempt(where: str, what: str, fn: Any, fix: str) -> Any:
    """Run ``fn`` and return its value; any failure becomes a :class:`ConfigError` naming ``where`` (udm's own
    errors keep their text)."""
    try:
        return fn()
    except UdmError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:  # a plugin's or torch's error: keep its text, say where it came from
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{where}: the experiment must {what}; got {type(exc).__name__}: {first}. {fix}.") from None
