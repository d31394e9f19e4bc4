"""Experiment files: YAML that names registered plugins and their keyword arguments (docs/tutorial.md).

::

    corruption: {name: gaussian, schedule: cosine}       # registry.create("corruption", "gaussian", ...)
    time:       {name: discrete, steps: 1000}
    model:      {name: mlp, width: 256, depth: 4}         # data_shape / vocab_size filled in from the data
    data:       {name: two_moons, n: 20000}               # or {file: points.npy} (.npy, .safetensors, .txt)
                                                          # + quantisation: {bins: 256, range: [-1, 1]} (images)
    train:      {steps: 3000, batch_size: 512, lr: 2.0e-3, ema: 0.999}   # udm.Trainer's keywords
    sample:     {sampler: invert, steps: 50, n: 4096}     # or nfe: 10 (model calls) instead of steps; + the
                                                          # sampler's own options (eta, solver, ...)
    eval:       {sliced_wasserstein: {projections: 256}}  # metric name -> its keywords; nll: the likelihood
                                                          # of held-out data (udm.likelihoods.NllOptions)
    run:        {out: runs/moons, seed: 0, checkpoint_every: 500, keep: 3}

Every key is checked against the signature of what it configures; errors name the key path, the
expected form, the value given and the closest valid key. YAML is read with a safe loader only:
a config names plugins, it never imports or runs code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from . import _yaml
from ._options import RunOptions, SampleOptions, TrainOptions
from ._registry import Registry
from ._schema import Param, Schema, schema_of
from ._validate import check_keys
from .errors import ConfigError, UnknownPluginError, did_you_mean
from . import hookspecs
from .hookspecs import PluginKind
from .plugin_spec import plugin_ref
from ._runlog import check_log
from ._plots import require_matplotlib
from .quantisation import Quantisation

__all__ = ["load_config", "parse_config", "apply_overrides", "validate", "plugin_schema", "sampler_schema",
           "plugin_sections", "sections", "required_sections", "OPTION_SECTIONS"]

#: section -> the options dataclass its keys are checked against
OPTION_SECTIONS = {"train": TrainOptions, "sample": SampleOptions, "run": RunOptions}


def plugin_sections() -> dict[str, PluginKind]:
    """Section -> its plugin kind, for every kind configured by a ``{name: ..., keywords}`` section."""
    return {k.section: k for k in hookspecs.KINDS.values() if k.section is not None}


def sections() -> tuple[str, ...]:
    """Every top-level section an experiment may have."""
    return (*plugin_sections(), "train", "sample", "eval", "run", "versions")


def required_sections() -> tuple[str, ...]:
    """The sections an experiment must have."""
    return (*(s for s, k in plugin_sections().items() if k.section_required), "train")

_DATA_FILE = {"file": Param("file", str), "quantisation": Param("quantisation", dict, None)}


def parse_config(text: str, source: str = "<config>") -> dict[str, Any]:
    """Parse YAML text into a mapping (safe loader, no duplicate keys, bounded aliases); errors name
    ``source:line:column``."""
    cfg = _yaml.load(text, source)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(sections())}); "
                          f"got {type(cfg).__name__}. Write `section: {{key: value}}` lines.")
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read an experiment file, apply ``--set key.path=value`` overrides; not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: the experiment file must exist; got {str(path)!r}. Check the path.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: the experiment file must be readable UTF-8 text; got {str(path)!r} "
                          f"({type(exc).__name__}: {exc}). Check the file.") from None
    cfg = parse_config(text, str(path))
    cfg = apply_overrides(cfg, overrides)
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("file"), str):
        data["file"] = str((path.parent / data["file"]).resolve())  # relative to the experiment file
    return cfg


def apply_overrides(cfg: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.steps=100", "model.width=64"]`` -> a new config; values are parsed as YAML."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set: override must be section.key=value; got {item!r}. E.g. --set train.steps=100.")
        value = parse_config(f"v: {raw}", f"--set {key}").get("v") if raw.strip() else None
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return cfg


def _fail(src: str, path: str, what: str, rule: str, got: Any, fix: str) -> None:
    raise ConfigError(f"{src}: {path}: {what} must be {rule}; got {got!r}. {fix}")


def _check_keys(src: str, section: str, body: dict[str, Any], schema: Schema, optional: tuple[str, ...] = (),
                kind: str = "") -> None:
    check_keys(f"{src}: {section}", body, schema, optional=optional, extra_valid=("name",) if kind else ())


def plugin_schema(registry: Registry, kind: str, name: str) -> Schema:
    """The config keys of the plugin ``name`` of ``kind``: its options callable's keyword parameters
    (a dataset's ``seed`` included), less what udm supplies itself."""
    spec = hookspecs.KINDS[kind]
    return schema_of(spec.options(registry.get(kind, name)), skip=spec.supplied)


def sampler_schema(registry: Registry, name: str) -> Schema:
    """The sample section's keys: :class:`SampleOptions` plus the sampler rule's keyword options."""
    rule = plugin_schema(registry, "sampler", name)
    return Schema({**schema_of(SampleOptions).params, **rule.params}, rule.open)


def _plugin_section(src: str, section: str, body: dict[str, Any], registry: Registry) -> None:
    kind = plugin_sections()[section].name
    if section == "data" and "quantisation" in body:  # a runner key of every data section (udm.Quantisation)
        Quantisation.from_config(body["quantisation"], f"{src}: data.quantisation")
        body = body if "file" in body else {k: v for k, v in body.items() if k != "quantisation"}
    if section == "data" and "file" in body:
        _check_keys(src, section, body, Schema(_DATA_FILE))
        if not Path(body["file"]).is_file():
            _fail(src, "data.file", "the file", "an existing file", body["file"],
                  "Check the path (relative paths are read from the experiment file's folder).")
        return
    if "name" not in body:
        _fail(src, f"{section}.name", "the key", f"given (a registered {kind})", None,
              f"Add name: <one of {', '.join(registry.names(kind)) or '(none installed)'}>.")
    name = body["name"]
    _registered(src, f"{section}.name", "the name", registry, kind, name)
    rest = {k: v for k, v in body.items() if k != "name"}
    _check_keys(src, section, rest, plugin_schema(registry, kind, name), plugin_sections()[section].injected, kind)


def _registered(src: str, path: str, what: str, registry: Registry, kind: str, name: Any) -> None:
    """``name`` must be registered for ``kind``; the error lists the alternatives and keeps the registry's
    notes (plugins that failed to load, plugin switches in effect)."""
    if isinstance(name, str) and name in registry.names(kind):
        return
    try:
        registry.get(kind, str(name))
    except UnknownPluginError as exc:
        note = str(exc).split(". Available: ", 1)[-1]
        raise ConfigError(f"{src}: {path}: {what} must be a registered {kind}; got {name!r}. Available: {note}") from None
    _fail(src, path, what, f"a registered {kind} (a string)", name, f"Available: {', '.join(registry.names(kind))}.")


def validate(cfg: dict[str, Any], registry: Registry, source: str = "<config>") -> dict[str, Any]:
    """Check every section and key; return the config with each section's defaults filled in."""
    known = sections()
    for section in cfg:
        if section not in known:
            _fail(source, section, "the section", f"one of {', '.join(known)}", section,
                  f"Remove or rename it.{did_you_mean(section, known)}")
    for section in required_sections():
        if section not in cfg:
            _fail(source, section, "the section", "present", None, f"Add a `{section}:` mapping.")
    for section, body in cfg.items():
        if body is None:
            cfg[section] = body = {}
        if not isinstance(body, dict):
            _fail(source, section, "the section", "a mapping of key: value", body, f"Write {section}: {{key: value}}.")
    for section in plugin_sections():
        if section in cfg:
            _plugin_section(source, section, cfg[section], registry)
    _check_keys(source, "train", cfg["train"], schema_of(TrainOptions))
    sample = cfg.setdefault("sample", {})
    sampler = sample.get("sampler", SampleOptions.sampler)
    _registered(source, "sample.sampler", "the name", registry, "sampler", sampler)
    _check_keys(source, "sample", sample, sampler_schema(registry, sampler))
    _nested_plugins(source, "sample", sample, SampleOptions, registry)
    _check_spacing(source, sample.get("spacing", SampleOptions.spacing), registry, cfg["time"].get("name"))
    _check_keys(source, "run", cfg.setdefault("run", {}), schema_of(RunOptions))
    if sample.get("nfe") is not None and sample.get("steps") is not None:
        _fail(source, "sample.nfe", "the key", "given without sample.steps (a budget of model calls sets the steps)",
              sample["nfe"], f"Remove steps: {sample['steps']} or nfe: {sample['nfe']}.")
    check_log(cfg["run"].get("log", ["jsonl"]), f"{source}: run.log")
    if cfg["run"].get("plots", True):
        require_matplotlib(f"{source}: run.plots")
    for metric, kwargs in cfg.setdefault("eval", {}).items():
        if metric == "nll":  # the likelihood of held-out data (udm.likelihoods), not a sample metric
            _check_nll(source, kwargs, registry)
            continue
        _registered(source, f"eval.{metric}", "the key", registry, "metric", metric)
        if kwargs is not None and not isinstance(kwargs, dict):
            _fail(source, f"eval.{metric}", "the value", "a mapping of the metric's keywords (or null)", kwargs,
                  f"Write {metric}: {{}}.")
        _check_keys(source, f"eval.{metric}", kwargs or {}, plugin_schema(registry, "metric", metric))
    return _with_defaults(cfg, registry)


def _check_nll(src: str, body: Any, registry: Registry) -> None:
    """``eval.nll``: a mapping of :class:`udm.likelihoods.NllOptions` and the named estimator's options."""
    from .likelihoods import nll_schema

    if body is not None and not isinstance(body, dict):
        _fail(src, "eval.nll", "the value", "a mapping of the likelihood's options (or null)", body,
              "Write nll: {estimator: elbo_discrete}.")
    body = body or {}
    if body.get("estimator") is not None:
        _registered(src, "eval.nll.estimator", "the name", registry, "estimator", body["estimator"])
    _check_keys(src, "eval.nll", body, nll_schema(registry, body))


def _nested_plugins(src: str, section: str, body: dict[str, Any], options: type, registry: Registry) -> None:
    """Keys of ``options`` annotated ``udm.PluginSpec[kind]`` (``sample.corrector``) must name a registered plugin
    of that kind; a mapping's other keys are checked against that plugin's signature."""
    for key, param in schema_of(options).params.items():
        ref, value = plugin_ref(param.annotation), body.get(key)
        if ref is None or value is None:
            continue
        name = value if isinstance(value, str) else value.get("name")
        path = f"{section}.{key}" if isinstance(value, str) else f"{section}.{key}.name"
        _registered(src, path, "the name", registry, ref.kind, name)
        if isinstance(value, dict):
            rest = {k: v for k, v in value.items() if k != "name"}
            check_keys(f"{src}: {section}.{key}", rest, plugin_schema(registry, ref.kind, name), extra_valid=("name",))


def _check_spacing(src: str, spacing: Any, registry: Registry, time_name: Any) -> None:
    """``sample.spacing`` must be one the time type offers (its ``spacings``), when it declares them."""
    offered = getattr(registry.get("time", time_name), "spacings", None) if isinstance(time_name, str) else None
    if isinstance(offered, (tuple, list)) and spacing not in offered:
        _fail(src, "sample.spacing", "the value", f"one of {', '.join(map(repr, offered))} (the spacings time "
              f"{time_name!r} offers)", spacing, f"Choose one of them.{did_you_mean(str(spacing), offered)}")


def _defaults(body: dict[str, Any], params: dict[str, Param], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(body)
    for name, p in params.items():
        if name not in out and not p.required and name not in skip and _plain(p.default):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def _with_defaults(cfg: dict[str, Any], registry: Registry) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for section, kind in plugin_sections().items():
        body = out.get(section)
        if body is not None and "name" in body:
            params = plugin_schema(registry, kind.name, body["name"]).params
            out[section] = {"name": body["name"], **_defaults(body, params, kind.injected)}
    for section, options in OPTION_SECTIONS.items():
        skip = ("family_options",) + (("steps",) if section == "sample" and out[section].get("nfe") is not None else ())
        out[section] = _defaults(out[section], schema_of(options).params, skip)  # nfe sets the steps
    return out
