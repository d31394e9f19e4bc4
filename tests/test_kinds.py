"""Issue 9's two pieces here: one table of plugin kinds that everything reads (adding a kind is one entry),
and typed option dataclasses for the train/sample/run sections, checked exactly like plugin signatures."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path

import pytest
import torch

import udm
from udm import hookspecs
from udm._options import STAGE_KEYS, RunOptions, SampleOptions, TrainOptions, fixed_on_resume
from udm._schema import schema_of
from udm.config import plugin_sections, required_sections, sections, validate
from udm.errors import ConfigError, PluginError
from udm.hookspecs import PluginKind

ROOT = Path(__file__).resolve().parents[1]


class Linear:
    """A plugin of the new kind: alpha, sigma of t."""

    name = "lin"

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t


def encoder(width: int = 4, mode: str = "a"):
    return torch.nn.Linear(width, width)


@pytest.fixture
def two_new_kinds(monkeypatch):
    """What the lead adds later, each as one table entry: a kind nested in another plugin's keywords (no
    section) and a kind with an optional section of its own."""
    new = [PluginKind("noise_law", "udm_register_noise_laws", "Register schedules.", required=("alpha", "sigma"),
                      signatures={"alpha": ("t",), "sigma": ("t",)}),
           PluginKind("encoder", "udm_register_encoders", "Register encoders.", section="encoder",
                      section_required=False, must_be_callable=True)]
    for kind in new:  # the one entry; its hookspec is generated from it
        monkeypatch.setitem(hookspecs._BY_NAME, kind.name, kind)
        monkeypatch.setattr(hookspecs, kind.hook, hookspecs._hookspec(kind), raising=False)
    return new


def _plugin(**hooks):
    module = types.ModuleType("new_kinds")
    for name, fn in hooks.items():
        setattr(module, name, udm.hookimpl(fn))
    return module


def test_a_new_kind_is_one_entry_registry_config_and_report_follow(two_new_kinds):
    reg = udm.load_registry()
    info = reg.add_plugin(_plugin(udm_register_noise_laws=lambda register: register(Linear),
                                  udm_register_encoders=lambda register: register(encoder)),
                          name="new", distribution="udm-new", version="1")
    assert info.status == "loaded", info.error
    assert reg.get("noise_law", "lin") is Linear and reg.names("encoder") == ["encoder"]
    assert isinstance(reg.create("noise_law", "lin"), Linear)
    # the config reads the table too: a new optional section with its keys checked like any plugin's
    assert "encoder" in sections() and "encoder" not in required_sections() and "noise_law" not in plugin_sections()
    base = {"corruption": {"name": "gaussian"}, "time": {"name": "discrete"}, "model": {"name": "mlp"},
            "data": {"name": "two_moons"}, "train": {"steps": 1}}
    cfg = validate({**base, "encoder": {"name": "encoder", "width": 8}}, reg)
    assert cfg["encoder"] == {"name": "encoder", "width": 8, "mode": "a"}
    with pytest.raises(ConfigError, match=r"encoder\.widht: the key must be one of mode, width, name; got 'widht'"):
        validate({**base, "encoder": {"name": "encoder", "widht": 8}}, reg)
    validate(base, reg)  # optional: not required
    from udm.plugin_report import build_report

    assert {"noise_law": ["lin"], "encoder": ["encoder"]} == build_report(reg).plugins[-1].registered


def test_a_new_kind_gets_its_contract_checked(two_new_kinds):
    class NoSigma:
        name = "broken"

        def alpha(self, t):
            return t

    class BadAlpha(Linear):
        name = "bad"

        def alpha(self):
            return 1

    reg = udm.load_registry(autoload=False)
    for obj, error in ((NoSigma, r"noise_law 'x' must provide alpha, sigma; missing sigma"),
                       (BadAlpha, r"noise_law 'x': method alpha must accept \(t\); got alpha\(self\)"),
                       (3, None)):
        info = reg.add_plugin(_plugin(udm_register_noise_laws=lambda register, o=obj: register(o, name="x")),
                              name=f"p{id(obj)}")
        if error is None:
            assert "noise_law 'x' must provide alpha, sigma" in info.error
        else:
            assert info.status == "failed" and re.search(error, info.error), info.error
    info = reg.add_plugin(_plugin(udm_register_encoders=lambda register: register(3, name="e")), name="enc")
    assert "encoder 'e' must be callable; got 3" in info.error


def test_nothing_else_lists_the_kinds():
    """The hooks and kinds are named in the table only (the docs test reads it too)."""
    for path in sorted((ROOT / "udm").rglob("*.py")):
        if path.name == "hookspecs.py":
            continue
        text = path.read_text()
        assert not re.search(r"udm_register_\w+", text), f"{path} names a hook: read hookspecs.KINDS instead"
        assert not re.search(r"\(\s*\"corruption\",\s*\"time\",\s*\"sampler\"", text), f"{path} lists the kinds"


def test_hookspecs_are_the_table():
    specs = {n: f for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "udm_spec")}
    assert sorted(specs) == sorted(k.hook for k in hookspecs.KINDS.values())
    for kind in hookspecs.KINDS.values():
        assert str(inspect.signature(specs[kind.hook])) == "(register)" and specs[kind.hook].__doc__ == kind.doc
    with pytest.raises(PluginError, match=r"metric 'energy_distance': create\(\) must be used for factories"):
        udm.registry().create("metric", "energy_distance")


# ---------------------------------------------------------------------------------------- (b) options
def test_trainer_defaults_are_the_train_sections():
    trainer = inspect.signature(udm.Trainer).parameters
    for f in dataclasses.fields(TrainOptions):
        if f.name in trainer:
            assert trainer[f.name].default == f.default, f.name
    own = {"network", "corruption", "time_type", "seed", "device"}
    # the second stage's keys (a variance head on a frozen mean, udm.variance_head) are the runner's, not the Trainer's
    assert set(trainer) - own == {f.name for f in dataclasses.fields(TrainOptions)} - {"steps", "batch_size", *STAGE_KEYS}


def test_option_sections_are_checked_like_a_signature_and_filled_with_its_defaults(reg):
    base = {"corruption": {"name": "gaussian"}, "time": {"name": "discrete"}, "model": {"name": "mlp"},
            "data": {"name": "two_moons"}, "train": {"steps": 1}}
    cfg = validate(dict(base), reg)
    for section, options in (("train", TrainOptions), ("run", RunOptions)):
        defaults = {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
                    for f in dataclasses.fields(options) if f.default is not dataclasses.MISSING}
        assert {k: v for k, v in cfg[section].items() if k in defaults} == defaults
    assert set(cfg["sample"]) == {f.name for f in dataclasses.fields(SampleOptions)} - {"family_options"}
    # the sample section is the options dataclass plus the sampler's own keywords
    assert validate({**base, "sample": {"sampler": "refresh", "eta": 0.5}}, reg)["sample"]["eta"] == 0.5
    assert schema_of(SampleOptions).params.keys() <= set(udm.config.sampler_schema(reg, "refresh").params)


def test_the_same_rule_gives_the_same_message_in_yaml_and_python(reg):
    base = {"corruption": {"name": "gaussian"}, "time": {"name": "discrete"}, "model": {"name": "mlp"},
            "data": {"name": "two_moons"}}
    with pytest.raises(ConfigError) as yaml_err:
        validate({**base, "train": {"steps": 1, "grad_clip": -1.0}}, reg, "exp.yaml")
    net = reg.create("model", "mlp", width=8, depth=1, time_dim=8)
    with pytest.raises(ConfigError) as py_err:
        udm.train(net, reg.create("corruption", "gaussian"), reg.create("time", "discrete"), torch.zeros(8, 2),
                  steps=1, grad_clip=-1.0)
    rule = "grad_clip: the value must be a number > 0 or None; got -1.0."
    assert f"exp.yaml: train.{rule}" in str(yaml_err.value) and f"udm.train.{rule}" in str(py_err.value)


def test_what_may_change_on_resume_is_declared_on_the_fields():
    assert fixed_on_resume(TrainOptions) == ("ema", *STAGE_KEYS) and fixed_on_resume(RunOptions) == ("seed",)
    assert fixed_on_resume(SampleOptions) == ()
