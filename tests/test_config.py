"""The experiment schema: keys checked against any plugin's signature; safe YAML; YAML == Python API."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

import udm
from udm.config import apply_overrides, load_config, parse_config, validate
from udm.errors import ConfigError
from udm.experiment import Experiment

BASE = {
    "corruption": {"name": "gaussian", "schedule": "cosine"},
    "time": {"name": "discrete", "steps": 100},
    "model": {"name": "mlp", "width": 16, "depth": 1},
    "data": {"name": "two_moons", "n": 64},
    "train": {"steps": 3, "batch_size": 8},
}


class ThirdParty(udm.GaussianNoise, udm.Corruption):
    """A corruption from an imaginary third-party package, with every annotation form the schema reads."""

    name = "third_party"

    def __init__(self, mode: Literal["a", "b"] = "a", scale: float = 1.0, taps: list[int] | None = None,
                 flag: bool = False, window: tuple[int, int] = (3, 3), untyped=2) -> None:
        self.window = window

    def forward(self, x0, eps, t):
        return x0

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.zeros(shape)


def _open_model(**kwargs):
    return torch.nn.Linear(2, 2)


@pytest.fixture(scope="module")
def reg() -> udm.Registry:
    r = udm.load_registry()
    plugin = types.ModuleType("third_party_plugin")

    @udm.hookimpl
    def udm_register_corruptions(register):
        register(ThirdParty)

    @udm.hookimpl
    def udm_register_models(register):
        register(_open_model, name="open_model")

    plugin.udm_register_corruptions = udm_register_corruptions
    plugin.udm_register_models = udm_register_models
    r.add_plugin(plugin, name="third_party", distribution="udm-third-party", version="9.9")
    return r


def _cfg(**sections):
    cfg = {k: dict(v) for k, v in BASE.items()}
    for k, v in sections.items():
        cfg[k] = v
    return cfg


@pytest.mark.parametrize("key,value,message", [
    ("mode", "c", r"corruption\.mode: the value must be one of 'a', 'b'; got 'c'\."),
    ("scale", "big", r"corruption\.scale: the value must be float; got 'big'\."),
    ("scale", True, r"corruption\.scale: the value must be float; got True\."),
    ("taps", [1, "x"], r"corruption\.taps: the value must be a list of int or None; got \[1, 'x'\]\."),
    ("flag", 1, r"corruption\.flag: the value must be bool; got 1\."),
    ("window", [3], r"corruption\.window: the value must be a list \[int, int\]; got \[3\]\."),
    ("untyped", "two", r"corruption\.untyped: the value must be float; got 'two'\."),  # from the default
    ("scael", 1.0, r"corruption\.scael: the key must be one of flag, mode, scale, taps, untyped, window, name; "
                   r"got 'scael'\. Remove or rename it\. Did you mean 'scale'\?"),
])
def test_any_plugins_signature_is_the_schema(reg, key, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(corruption={"name": "third_party", key: value}), reg, "exp.yaml")


def test_valid_third_party_config_gets_its_defaults_and_tuples(reg):
    cfg = validate(_cfg(corruption={"name": "third_party", "taps": [1, 2], "scale": 2}), reg)
    assert cfg["corruption"] == {"name": "third_party", "mode": "a", "scale": 2, "taps": [1, 2], "flag": False,
                                 "window": [3, 3], "untyped": 2}
    exp = Experiment(cfg, reg)
    corruption, _, _ = exp.build([2], None, 0)
    assert corruption.window == (3, 3)  # YAML lists become tuples where the signature asks for a tuple


def test_kwargs_plugins_accept_any_key_and_missing_required_keys_are_named(reg):
    validate(_cfg(model={"name": "open_model", "anything": 1}), reg)
    with pytest.raises(ConfigError, match=r"train\.steps: the key must be given \(it has no default\); got None\. "
                                          r"Add steps: <an integer >= 0> to train\."):
        validate(_cfg(train={"batch_size": 8}), reg)
    with pytest.raises(ConfigError, match=r"exp.yaml: model: the section must be present; got None\."):
        validate({k: v for k, v in BASE.items() if k != "model"}, reg, "exp.yaml")
    with pytest.raises(ConfigError, match=r"model\.name: the key must be given \(a registered model\)"):
        validate(_cfg(model={"width": 3}), reg)


def test_unknown_plugin_names_list_the_alternatives(reg):
    with pytest.raises(ConfigError, match=r"time\.name: the name must be a registered time; got 'discrete_'\. "
                                          r"Available: continuous, discrete\. Did you mean 'discrete'\?"):
        validate(_cfg(time={"name": "discrete_"}), reg)
    with pytest.raises(ConfigError, match=r"sample\.eta: the value must be float or None; got 'x'"):
        validate(_cfg(sample={"sampler": "refresh", "eta": "x"}), reg)  # the sampler rule's own options


def test_safe_loader_never_runs_code(tmp_path):
    with pytest.raises(ConfigError, match=r"<config>:1:\d+: YAML syntax must be valid; got could not determine "
                                          r"a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"):
        parse_config("x: !!python/object/apply:os.system ['touch pwned']")
    assert not Path("pwned").exists()


def test_floats_and_overrides_parse_as_yaml():
    assert parse_config("lr: 1e-3\nb: 2.0E+2\nc: 3\n") == {"lr": 1e-3, "b": 200.0, "c": 3}
    cfg = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=2e-4", "model.width=64", "sample.eta=null"])
    assert cfg == {"train": {"lr": 2e-4}, "model": {"width": 64}, "sample": {"eta": None}}
    with pytest.raises(ConfigError, match=r"--set: override must be section.key=value; got 'x'"):
        apply_overrides({}, ["x"])


def test_yaml_and_python_name_the_same_plugins(tmp_path, reg):
    (tmp_path / "e.yaml").write_text(
        "corruption: {name: gaussian, schedule: cosine}\ntime: {name: discrete, steps: 100}\n"
        "model: {name: mlp, width: 16, depth: 1}\ndata: {name: two_moons, n: 64}\ntrain: {steps: 3, batch_size: 8}\n")
    from_yaml = Experiment.from_file(tmp_path / "e.yaml", registry=reg)
    from_py = Experiment.from_dict(BASE, registry=reg)
    assert from_yaml.config == from_py.config
    c, t, net = from_py.build([2], None, seed=0)
    c2 = reg.create("corruption", "gaussian", schedule="cosine")
    torch.manual_seed(0)
    net2 = reg.create("model", "mlp", data_shape=[2], width=16, depth=1)
    assert repr(c) == repr(c2) and t.steps == 100
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))


def test_data_files_load_without_pickle(tmp_path):
    from udm._artifacts import read_data_file

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",")
    np.save(tmp_path / "tok.npy", np.array([[1, 2], [3, 4]]))
    assert torch.equal(read_data_file(str(tmp_path / "x.npy")), torch.from_numpy(x))
    assert torch.equal(read_data_file(str(tmp_path / "x.csv")), torch.from_numpy(x))
    assert read_data_file(str(tmp_path / "tok.npy")).dtype == torch.long
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_data_file(str(tmp_path / "obj.npy"))
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data\.file: the file type must be \.npy, \.safetensors, \.txt or \.csv; "
                                          r"got '\.pt'"):
        read_data_file(str(tmp_path / "x.pt"))


EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_validates_and_states_its_target(path):
    validate(load_config(path), udm.registry(), str(path))
    assert "Expect:" in path.read_text()
