"""Experiment files: YAML that names registered plugins and their keyword arguments (DESIGN.md §6).

::

    corruption: {name: gaussian, schedule: cosine}       # registry.create("corruption", "gaussian", ...)
    time:       {name: discrete, steps: 1000}
    model:      {name: mlp, width: 256, depth: 4}         # data_shape / vocab_size filled in from the data
    data:       {name: two_moons, n: 20000}               # or {file: points.npy} (.npy, .safetensors, .txt)
    train:      {steps: 3000, batch_size: 512, lr: 2.0e-3, ema: 0.999}   # udm.Trainer's keywords
    sample:     {sampler: invert, steps: 50, n: 4096}     # or nfe: 10 (model calls) instead of steps; + the
                                                          # sampler's own options (eta, solver, ...)
    eval:       {sliced_wasserstein: {projections: 256}}  # metric name -> its keywords
    run:        {out: runs/moons, seed: 0, checkpoint_every: 500, keep: 3}

Every key is checked against the signature of what it configures; errors name the key path, the
expected form, the value given and the closest valid key. YAML is read with a safe loader only:
a config names plugins, it never imports or runs code.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from ._registry import Registry
from ._schema import Param, Schema, conforms, describe, schema_of
from .errors import ConfigError, UnknownPluginError, did_you_mean
from .training import Trainer

__all__ = ["load_config", "parse_config", "apply_overrides", "validate", "SECTIONS", "KIND_OF_SECTION"]

KIND_OF_SECTION = {"corruption": "corruption", "time": "time", "model": "model", "data": "dataset"}
SECTIONS = ("corruption", "time", "model", "data", "train", "sample", "eval", "run", "versions")
REQUIRED = ("corruption", "time", "model", "data", "train")
#: keys the runner fills in from the data when the plugin's signature takes them
INJECTED = {"model": ("data_shape", "vocab_size"), "corruption": ("vocab_size",), "time": (), "data": ()}

_TRAIN_EXTRA = {"steps": Param("steps", int), "batch_size": Param("batch_size", int, 256)}
_SAMPLE = {
    "sampler": Param("sampler", str, "invert"), "steps": Param("steps", int, 50),
    "nfe": Param("nfe", int | None, None), "n": Param("n", int, 1024),
    "spacing": Param("spacing", str, "uniform"), "clamp": Param("clamp", bool, False),
    "seed": Param("seed", int | None, None), "family_options": Param("family_options", dict, None),
}
_RUN = {
    "out": Param("out", str | None, None), "seed": Param("seed", int, 0), "device": Param("device", str | None, None),
    "checkpoint_every": Param("checkpoint_every", int, 500), "keep": Param("keep", int, 3),
    "log_every": Param("log_every", int, 10),
}
_DATA_FILE = {"file": Param("file", str)}
_RULE_SKIP = ("denoiser", "corruption", "times", "x_init", "generator", "callback", "clamp")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_config(text: str, source: str = "<config>") -> dict[str, Any]:
    """Parse YAML text into a mapping (safe loader); syntax errors name ``source:line:column``."""
    try:
        cfg = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: YAML syntax must be valid; got {exc.problem or exc}. "
                          f"Fix the file at line {mark.line + 1 if mark else '?'}, column "
                          f"{mark.column + 1 if mark else '?'}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: YAML must be valid; got {exc}. Fix the file.") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)}); "
                          f"got {type(cfg).__name__}. Write `section: {{key: value}}` lines.")
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read an experiment file, apply ``--set key.path=value`` overrides; not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: the experiment file must exist; got {str(path)!r}. Check the path.")
    cfg = parse_config(path.read_text(), str(path))
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
    for key, value in body.items():
        param = schema.params.get(key)
        if param is None:
            if schema.open:
                continue
            valid = sorted(schema.params) + (["name"] if kind else [])
            _fail(src, f"{section}.{key}", "the key", f"one of {', '.join(valid)}", key,
                  f"Remove or rename it.{did_you_mean(key, valid)}")
        if not conforms(value, param.annotation):
            _fail(src, f"{section}.{key}", "the value", describe(param.annotation), value,
                  f"Write {key}: <{describe(param.annotation)}>.")
    for name, param in schema.params.items():
        if param.required and name not in body and name not in optional:
            _fail(src, f"{section}.{name}", "the key", "given (it has no default)", None,
                  f"Add {name}: <{describe(param.annotation)}> to {section}.")


def plugin_schema(registry: Registry, kind: str, name: str) -> Schema:
    """What a plugin's factory accepts (a dataset's ``seed`` included)."""
    return schema_of(registry.get(kind, name))


def sampler_schema(registry: Registry, name: str) -> Schema:
    """The sample section's keys: the runner's own plus the sampler rule's keyword options."""
    spec = registry.get("sampler", name)
    rule = schema_of(spec.rule, skip=_RULE_SKIP)
    return Schema({**_SAMPLE, **rule.params}, rule.open)


def _plugin_section(src: str, section: str, body: dict[str, Any], registry: Registry) -> None:
    kind = KIND_OF_SECTION[section]
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
    if not isinstance(name, str) or name not in registry.names(kind):
        names = registry.names(kind)
        try:
            registry.get(kind, str(name))
        except UnknownPluginError as exc:  # keeps the note on plugins that failed to load
            note = str(exc).split(". Available: ", 1)[-1]
            raise ConfigError(f"{src}: {section}.name: the name must be a registered {kind}; got {name!r}. "
                              f"Available: {note}") from None
        _fail(src, f"{section}.name", "the name", f"a registered {kind}", name, f"Available: {', '.join(names)}.")
    rest = {k: v for k, v in body.items() if k != "name"}
    _check_keys(src, section, rest, plugin_schema(registry, kind, name), INJECTED[section], kind)


def validate(cfg: dict[str, Any], registry: Registry, source: str = "<config>") -> dict[str, Any]:
    """Check every section and key; return the config with each section's defaults filled in."""
    for section in cfg:
        if section not in SECTIONS:
            _fail(source, section, "the section", f"one of {', '.join(SECTIONS)}", section,
                  f"Remove or rename it.{did_you_mean(section, SECTIONS)}")
    for section in REQUIRED:
        if section not in cfg:
            _fail(source, section, "the section", "present", None, f"Add a `{section}:` mapping.")
    for section, body in cfg.items():
        if body is None:
            cfg[section] = body = {}
        if not isinstance(body, dict):
            _fail(source, section, "the section", "a mapping of key: value", body, f"Write {section}: {{key: value}}.")
    for section in KIND_OF_SECTION:
        _plugin_section(source, section, cfg[section], registry)
    train = Schema({**schema_of(Trainer, skip=("network", "corruption", "time_type", "seed", "device")).params,
                    **_TRAIN_EXTRA})
    _check_keys(source, "train", cfg["train"], train)
    sample = cfg.setdefault("sample", {})
    sampler = sample.get("sampler", "invert")
    if not isinstance(sampler, str) or sampler not in registry.names("sampler"):
        names = registry.names("sampler")
        _fail(source, "sample.sampler", "the name", "a registered sampler", sampler,
              f"Available: {', '.join(names)}.{did_you_mean(str(sampler), names)}")
    _check_keys(source, "sample", sample, sampler_schema(registry, sampler))
    if sample.get("nfe") is not None and sample.get("steps") is not None:
        _fail(source, "sample.nfe", "the key", "given without sample.steps (a budget of model calls sets the steps)",
              sample["nfe"], f"Remove steps: {sample['steps']} or nfe: {sample['nfe']}.")
    _check_keys(source, "run", cfg.setdefault("run", {}), Schema(_RUN))
    for metric, kwargs in cfg.setdefault("eval", {}).items():
        if metric not in registry.names("metric"):
            names = registry.names("metric")
            _fail(source, f"eval.{metric}", "the key", "a registered metric", metric,
                  f"Available: {', '.join(names)}.{did_you_mean(metric, names)}")
        if kwargs is not None and not isinstance(kwargs, dict):
            _fail(source, f"eval.{metric}", "the value", "a mapping of the metric's keywords (or null)", kwargs,
                  f"Write {metric}: {{}}.")
        skip = ("samples", "reference", "generator")
        _check_keys(source, f"eval.{metric}", kwargs or {}, schema_of(registry.get("metric", metric), skip=skip))
    _positive(source, cfg)
    return _with_defaults(cfg, registry, train)


def _positive(src: str, cfg: dict[str, Any]) -> None:
    for section, key, low in (("train", "steps", 0), ("train", "batch_size", 1), ("sample", "steps", 1),
                              ("sample", "nfe", 1), ("sample", "n", 1), ("run", "checkpoint_every", 0),
                              ("run", "keep", 1), ("run", "log_every", 1)):
        value = cfg[section].get(key)
        if isinstance(value, int) and value < low:
            _fail(src, f"{section}.{key}", "the value", f"an integer >= {low}", value, f"Set {key} >= {low}.")


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


def _with_defaults(cfg: dict[str, Any], registry: Registry, train: Schema) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for section, kind in KIND_OF_SECTION.items():
        body = out[section]
        if "name" in body:
            params = plugin_schema(registry, kind, body["name"]).params
            out[section] = {"name": body["name"], **_defaults(body, params, INJECTED[section])}
    out["train"] = _defaults(out["train"], train.params)
    budget = ("steps",) if out["sample"].get("nfe") is not None else ()  # nfe sets the steps
    out["sample"] = _defaults(out["sample"], {k: v for k, v in _SAMPLE.items() if k != "family_options"}, budget)
    out["run"] = _defaults(out["run"], _RUN)
    return out
