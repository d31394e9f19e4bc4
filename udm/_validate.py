"""Checks of user input that YAML and Python share: keyword options, data tensors, devices, and the
arguments of :func:`udm.sample`, :func:`udm.train` and ``Registry.create``.

Every check raises :class:`~udm.errors.ConfigError` with the template
``<where>: <what> must be <rule>; got <value>. <fix>.`` where ``where`` is a YAML key path
(``exp.yaml: train``) or a Python function (``udm.train``), so the two paths give the same message.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ._schema import Schema, conforms, describe, schema_of
from .batch import is_parts
from .errors import ConfigError, UdmWarning, did_you_mean

__all__ = ["check_keys", "check_data_shape", "check_data", "check_device", "check_sample_args", "check_train_args",
           "check_factory_kwargs", "DATA_KINDS", "SCALE_WARNING"]

#: data kind -> (does the data fit, what it must be, how to fix it)
DATA_KINDS: dict[str, tuple[Any, str, str]] = {
    "continuous": (lambda x: x.is_floating_point(), "floating point",
                   "Convert it to floats (e.g. x.astype('float32') before saving)"),
    "tokens": (lambda x: not x.is_floating_point() and not x.is_complex(), "integer token ids",
               "Save token ids as integers"),
    "sequences": (lambda x: not x.is_floating_point() and not x.is_complex(), "integer token ids",
                  "Save token ids as integers (padded rows) or build udm.Sequences"),
}
#: data whose largest magnitude exceeds this (or whose RMS is below 1 / this) gets a warning
SCALE_WARNING = 1e3


def check_keys(where: str, body: Mapping[str, Any], schema: Schema, *, optional: tuple[str, ...] = (),
               extra_valid: tuple[str, ...] = (), python: bool = False) -> None:
    """Every key of ``body`` must be in ``schema`` (unless it is open) with a conforming value; every
    required parameter must be given (unless in ``optional``). ``python``: phrase fixes as keyword arguments."""
    for key, value in body.items():
        param = schema.params.get(key)
        if param is None:
            if schema.open:
                continue
            valid = sorted(schema.params) + list(extra_valid)
            raise ConfigError(f"{where}.{key}: the key must be one of {', '.join(valid) or '(none)'}; got {key!r}. "
                              f"Remove or rename it.{did_you_mean(str(key), valid)}")
        if not conforms(value, param.annotation):
            form = describe(param.annotation)
            fix = f"Pass {key}=<{form}>." if python else f"Write {key}: <{form}>."
            raise ConfigError(f"{where}.{key}: the value must be {form}; got {value!r}. {fix}")
    for name, param in schema.params.items():
        if param.required and name not in body and name not in optional:
            form = describe(param.annotation)
            fix = f"Pass {name}=<{form}>." if python else f"Add {name}: <{form}> to {where.rsplit(': ', 1)[-1]}."
            raise ConfigError(f"{where}.{name}: the key must be given (it has no default); got None. {fix}")


# --------------------------------------------------------------------------------------------- data
def check_data_shape(data: Any, where: str) -> None:
    """The data must be a non-empty ``(n, ...)`` tensor (or :class:`udm.Sequences`)."""
    tokens = getattr(data, "tokens", data)
    if not isinstance(tokens, torch.Tensor):
        raise ConfigError(f"{where}: the data must be a tensor (n, ...) or udm.Sequences; got "
                          f"{type(data).__name__}. Return a torch.Tensor from the dataset.")
    if tokens.ndim < 2 or tokens.shape[0] == 0 or tokens.numel() == 0:
        raise ConfigError(f"{where}: the data must be a non-empty array (n, ...) with n >= 1 examples of at least "
                          f"one value each; got shape {tuple(tokens.shape)}. "
                          f"{'Reshape it to (n, 1).' if tokens.ndim == 1 and len(tokens) else 'Check the file.'}")


def check_data(data: Any, corruption: Any, where: str) -> None:
    """The training data must be a non-empty ``(n, ...)`` tensor (or :class:`udm.Sequences`) of the kind
    the corruption takes, finite; extreme scales get a :class:`~udm.errors.UdmWarning`. Data made of parts (a
    mapping part -> tensor) needs a corruption of parts (a product), each of whose parts has data of its kind."""
    if is_parts(data) or getattr(corruption, "data_kind", None) == "parts":
        _check_parts(data, corruption, where)
        return
    check_data_shape(data, where)
    tokens = getattr(data, "tokens", data)
    kind = getattr(corruption, "data_kind", "continuous")
    fits, rule, fix = DATA_KINDS.get(kind, (lambda x: True, "", ""))
    if not fits(tokens):
        name = getattr(corruption, "name", type(corruption).__name__)
        raise ConfigError(f"{where}: the data must be {rule} for corruption {name!r} (data kind {kind!r}); got "
                          f"{tokens.dtype}. {fix}.")
    if tokens.is_floating_point():
        _check_finite(tokens, where)
    elif tokens.numel() and int(tokens.min()) < 0 and getattr(data, "lengths", None) is None:
        raise ConfigError(f"{where}: token ids must be >= 0; got {int(tokens.min())}. Map the vocabulary to 0..V-1.")


def _check_parts(data: Any, corruption: Any, where: str) -> None:
    name = getattr(corruption, "name", type(corruption).__name__)
    if not is_parts(data):
        raise ConfigError(f"{where}: the data must be a mapping part -> tensor (n, ...) for corruption {name!r}, whose "
                          f"data is made of parts; got {type(data).__name__}. Return a dict of tensors from the dataset "
                          f"(e.g. labelled_blobs).")
    if getattr(corruption, "data_kind", None) != "parts":
        raise ConfigError(f"{where}: the data must be a tensor (n, ...) for corruption {name!r}; got a mapping of parts "
                          f"({', '.join(map(str, data))}). Corrupt each part with a product: corruption: {{name: "
                          f"product, parts: {{<part>: <corruption>, ...}}}}.")
    for k, v in data.items():
        check_data_shape(v, f"{where}[{k!r}]")
    counts = {k: len(getattr(v, "tokens", v)) for k, v in data.items()}
    if len(set(counts.values())) > 1:
        raise ConfigError(f"{where}: every part must have the same number of examples; got {counts}. One row per "
                          f"example in every part.")
    parts = getattr(corruption, "parts", None)
    if not isinstance(parts, Mapping):  # the class, before it is built: the parts are checked on the instance
        return
    for k, part in parts.items():
        if k not in data:
            raise ConfigError(f"{where}: corruption.parts.{k} must have data (a key {k!r} of the data); got data with "
                              f"keys {', '.join(map(str, data))}. Name the parts after the data's keys.")
        check_data(data[k], part, f"{where}[{k!r}]")
    extra = [k for k in data if k not in parts]
    if extra:
        raise ConfigError(f"{where}: every part of the data must have a corruption (corruption.parts.{extra[0]}); got "
                          f"none for {', '.join(map(repr, extra))}. Add it to corruption.parts or drop it from the data.")


def _check_finite(x: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.reshape(len(x), -1).any(dim=1).nonzero().flatten()
        raise ConfigError(f"{where}: the data must be finite; got {int(bad.sum())} NaN/inf values in "
                          f"{len(rows)} examples (first: index {int(rows[0])}). Clean or drop those examples.")
    big = float(x.abs().max())
    rms = float(x.double().square().mean().sqrt())
    if big > SCALE_WARNING or 0 < rms < 1 / SCALE_WARNING:
        warnings.warn(f"{where}: the data's scale should be of order 1 (the prior is unit-scale noise); got "
                      f"max |x| = {big:.3g}, RMS {rms:.3g}. Standardise it ((x - mean) / std) or scale it to "
                      f"[-1, 1]; at this scale training is slow or unstable.", UdmWarning, stacklevel=3)


def check_device(device: Any, where: str) -> None:
    """``device`` (a string, ``"auto"`` or ``None``) must name a device this machine has."""
    if device is None or device == "auto":
        return
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, AttributeError, TypeError, ValueError) as exc:
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            have.append("mps")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: the device must be available on this machine; got {device!r} ({first}). "
                          f"Available: {', '.join(have)}; use 'auto' for CUDA (or MPS) when present, else the CPU.") from None


# ---------------------------------------------------------------------------------------- Python API
def check_factory_kwargs(where: str, factory: Any, kwargs: Mapping[str, Any]) -> None:
    """The types of keyword arguments given to a plugin factory (names are checked by binding)."""
    params = schema_of(factory).params
    for key, value in kwargs.items():
        param = params.get(key)
        if param is not None and not conforms(value, param.annotation):
            form = describe(param.annotation)
            raise ConfigError(f"{where}: {key} must be {form}; got {value!r}. Pass {key}=<{form}>.")


def _shape_of(model: Any) -> tuple[int, ...] | None:
    shape = getattr(model, "data_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in shape):
        return tuple(shape)
    return None


def _device_of(model: Any) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        return p.device if p is not None else None
    return None


def check_expectations(network: Any, corruption: Any, time_type: Any, where: str) -> None:
    """A network trained elsewhere may declare what it needs (``network.udm_expects``): the corruption's
    ``prediction`` and the discrete time type's ``time_steps``. A config that disagrees is refused."""
    expects = getattr(network, "udm_expects", None)
    if not isinstance(expects, Mapping):
        return
    name = getattr(network, "name", type(network).__name__)
    want = expects.get("prediction")
    have = getattr(getattr(corruption, "parameterization", None), "prediction", None)
    if want is not None and have != want:
        raise ConfigError(f"{where}: the corruption's prediction must be what model {name!r} outputs, {want!r}; got "
                          f"{have!r}. Set corruption.prediction: {want}.")
    steps = expects.get("time_steps")
    if steps is not None and getattr(time_type, "steps", None) != steps:
        raise ConfigError(f"{where}: the time type must be discrete with the steps model {name!r} was trained on, "
                          f"{steps}; got {time_type!r}. Use time: {{name: discrete, steps: {steps}}}.")


def check_sample_args(model: Any, corruption: Any, time_type: Any, *, shape: Any, sampler: Any, steps: Any,
                      spacing: Any, generator: Any, family_options: Any, options: Mapping[str, Any],
                      registry: Any = None, where: str = "udm.sample") -> None:
    """What :func:`udm.sample` needs from its arguments (see its docstring); ``where`` names the caller."""
    from .hookspecs import KINDS

    if not callable(model):
        raise ConfigError(f"{where}: model must be a torch.nn.Module or a denoiser (x_t, t, generator) -> x0_hat; got "
                          f"{type(model).__name__}. Pass the trained network (e.g. run.ema).")
    _check_plugins(where, corruption, time_type)
    _check_shape(where, shape)
    check_expectations(model.network if hasattr(model, "network") else model, corruption, time_type, where)
    want = _shape_of(model.network if hasattr(model, "network") else model)
    if want is not None and getattr(corruption, "data_kind", "continuous") == "continuous" \
            and tuple(shape[1:]) != want:
        raise ConfigError(f"{where}: shape must be (n, *data_shape) = (n, {', '.join(map(str, want))}) for this "
                          f"model; got {tuple(shape)}. Use shape=({shape[0]}, {', '.join(map(str, want))}).")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"{where}: steps must be an integer >= 1; got {steps!r}. Leave it unset for 50 steps, "
                          f"or give nfe for a budget of model calls.")
    offered = getattr(time_type, "spacings", None)
    if isinstance(offered, (tuple, list)) and spacing not in offered:
        raise ConfigError(f"{where}: spacing must be one of {', '.join(map(repr, offered))} (what "
                          f"{type(time_type).__name__} offers); got {spacing!r}.{did_you_mean(str(spacing), offered)}")
    _check_generator(where, generator, _device_of(model))
    streams = getattr(generator, "streams", None)
    if streams is not None and len(streams) != shape[0]:
        raise ConfigError(f"{where}: generator must have one stream per sample (shape[0] = {shape[0]}); got a "
                          f"udm.PerSampleGenerator for {len(streams)} samples. Build it with "
                          f"udm.PerSampleGenerator(seed, indices) for the {shape[0]} samples of this batch.")
    spec = _spec_of(sampler, registry, where)
    rule = schema_of(spec.rule, skip=KINDS["sampler"].supplied)
    check_keys(f"{where}: sampler {spec.name!r}: option", dict(options), rule, python=True)
    _check_family_options(where, corruption, family_options)


def _check_shape(where: str, shape: Any) -> None:
    """A tuple (n, *data_shape) of integers >= 1, or for data made of parts a mapping part -> such a tuple with the
    same n."""
    if is_parts(shape) and shape:
        for k, s in shape.items():
            _check_shape(f"{where}: shape[{k!r}]", s)
        if len({tuple(s)[0] for s in shape.values()}) > 1:
            raise ConfigError(f"{where}: shape must give every part the same number of samples n; got {dict(shape)!r}.")
        return
    if (not isinstance(shape, (tuple, list, torch.Size)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise ConfigError(f"{where}: shape must be a tuple (n, *data_shape) of integers >= 1; got {shape!r}. "
                          f"E.g. shape=(1000, 2) (data made of parts: {{part: (n, *shape), ...}}).")


def _check_plugins(where: str, corruption: Any, time_type: Any) -> None:
    """``corruption`` and ``time_type`` must have their kinds' required members."""
    from .hookspecs import KINDS

    for arg, obj, kind in (("corruption", corruption, "corruption"), ("time_type", time_type, "time")):
        missing = [m for m in KINDS[kind].required if not hasattr(obj, m)]
        if missing:
            raise ConfigError(f"{where}: {arg} must be a udm {kind} (with {', '.join(KINDS[kind].required)}); got "
                              f"{type(obj).__name__}, which lacks {', '.join(missing)}. Build it with "
                              f"registry.create({kind!r}, name, ...).")


def _spec_of(sampler: Any, registry: Any, where: str) -> Any:
    from ._registry import registry as default_registry
    from .samplers import SamplerSpec

    if isinstance(sampler, SamplerSpec):
        return sampler
    if not isinstance(sampler, str):
        raise ConfigError(f"{where}: sampler must be a registered sampler's name or a udm.SamplerSpec; got "
                          f"{type(sampler).__name__}. E.g. sampler='ddim'.")
    return (registry or default_registry()).get("sampler", sampler)


def _check_generator(where: str, generator: Any, device: torch.device | None) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"{where}: generator must be a torch.Generator or None; got {type(generator).__name__}. "
                          f"Pass torch.Generator(device=...).manual_seed(seed).")
    if device is not None and generator.device.type != device.type:
        raise ConfigError(f"{where}: generator must be on the model's device ({device}); got a generator on "
                          f"{generator.device}. Create it with torch.Generator(device={str(device)!r}).")


def _check_family_options(where: str, corruption: Any, family_options: Any) -> None:
    from .families import FAMILIES

    if family_options is None:
        return
    if not isinstance(family_options, Mapping):
        raise ConfigError(f"{where}: family_options must be a mapping of the q_theta family's keywords; got "
                          f"{family_options!r}. E.g. family_options={{'temperature': 0.8}}.")
    family = getattr(corruption, "family", None)
    if isinstance(family, str) and family in FAMILIES:
        schema = schema_of(FAMILIES[family])
        if family_options and not schema.params and not schema.open:
            raise ConfigError(f"{where}.family_options: the keys must be options of the q_theta family {family!r}, "
                              f"which takes none; got {sorted(family_options)}. Remove family_options (only some "
                              f"families take options, e.g. categorical: temperature, top_k, top_p, greedy).")
        check_keys(f"{where}.family_options", dict(family_options), schema, python=True)


def check_train_args(network: Any, corruption: Any, time_type: Any, data: Any, *, steps: Any, batch_size: Any,
                     options: Mapping[str, Any]) -> None:
    """What :func:`udm.train` needs from its arguments (see its docstring)."""
    from ._options import STAGE_KEYS, TrainOptions
    from .training import Trainer

    where = "udm.train"
    if not isinstance(network, torch.nn.Module) or next(network.parameters(), None) is None:
        raise ConfigError(f"{where}: network must be a torch.nn.Module with parameters; got "
                          f"{type(network).__name__}. Build one with registry.create('model', name, ...).")
    _check_plugins(where, corruption, time_type)
    check_data(data, corruption, f"{where}: data")
    want = _shape_of(network)
    tokens = getattr(data, "tokens", data)
    if want is not None and not is_parts(data) and tokens.is_floating_point() and tuple(tokens.shape[1:]) != want:
        raise ConfigError(f"{where}: data must have shape (n, {', '.join(map(str, want))}) for this network "
                          f"(its data_shape); got {tuple(tokens.shape)}. Build the network with "
                          f"data_shape={list(tokens.shape[1:])}.")
    schema = Schema({**{k: p for k, p in schema_of(TrainOptions).params.items() if k not in STAGE_KEYS},
                     **{k: p for k, p in schema_of(Trainer).params.items() if k in ("seed", "device")}})
    check_keys(where, {"steps": steps, "batch_size": batch_size, **options}, schema, python=True)

