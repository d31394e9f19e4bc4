"""``udm plugins``' report (udm.plugin_report): per plugin distribution, version, status, error and what
it registered; per corruption the capabilities it offers, the samplers they unlock and the loss its family
fixes; text and JSON; the environment switches."""

from __future__ import annotations

import json
import types

import pytest
import torch

import udm
from udm.plugin_report import PluginReport, build_report, main


class _Dist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class _EP:
    """What ``importlib.metadata.EntryPoint`` offers the registry."""

    def __init__(self, name: str, target, dist: str, version: str = "2.5") -> None:
        self.name, self._target, self.value, self.dist = name, target, f"{name}_mod", _Dist(dist, version)

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def _module(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, fn in hooks.items():
        setattr(mod, key, udm.hookimpl(fn))
    return mod


class Plain(udm.GaussianNoise, udm.Corruption):
    """Only the required set plus GaussianNoise's refresh_noise: no noise posterior."""

    name = "plain"

    def forward(self, x0, eps, t):
        return x0 + udm.append_dims(t, x0.ndim).to(x0.dtype) * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator)


class Invertible(Plain):
    name = "invertible"
    family = "laplace"

    def noise_posterior(self, x_t, x0, t, generator=None):
        return (x_t - x0) / udm.append_dims(t, x0.ndim).to(x0.dtype)


class NeedsArgs(Plain):
    name = "needs_args"

    def __init__(self, width: int) -> None:
        self.width = width


class Tokens(Plain):
    name = "tokens"
    data_kind = "tokens"
    family = "categorical"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size


def _rule(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    return x_init


SPECS = [udm.SamplerSpec("any", _rule, ()), udm.SamplerSpec("inv", _rule, ("noise_posterior",)),
         udm.SamplerSpec("post", _rule, ("posterior",))]


def _eps():
    corr = _module("corr", udm_register_corruptions=lambda register: [register(c) for c in
                                                                       (Plain, Invertible, NeedsArgs, Tokens)])
    samp = _module("samp", udm_register_samplers=lambda register: [register(s) for s in SPECS])
    broken = ImportError("no module named 'cv2'")
    return [_EP("corr", corr, "acme-corr"), _EP("samp", samp, "acme-samplers", "0.3"),
            _EP("vision", broken, "acme-vision", "1.0")]


@pytest.fixture
def report() -> PluginReport:
    return build_report(udm.load_registry(entry_points=_eps(), strict=False))


def test_plugins_with_distribution_version_status_and_registrations(report):
    by = {p.distribution: p for p in report.plugins}
    assert sorted(by) == ["acme-corr", "acme-samplers", "acme-vision"]
    assert (by["acme-corr"].version, by["acme-corr"].status, by["acme-corr"].error) == ("2.5", "loaded", None)
    assert by["acme-corr"].registered == {"corruption": ["plain", "invertible", "needs_args", "tokens"]}
    assert by["acme-samplers"].registered == {"sampler": ["any", "inv", "post"]}
    assert by["acme-vision"].status == "failed"
    assert by["acme-vision"].error == "import failed: ImportError: no module named 'cv2'"
    assert [p.name for p in report.failed] == ["vision"]


def test_corruptions_list_capabilities_samplers_and_loss(report):
    by = {c.name: c for c in report.corruptions}
    assert by["plain"].samplers == ["any"] and "noise_posterior" not in by["plain"].capabilities
    assert by["invertible"].samplers == ["any", "inv"]
    assert by["invertible"].capabilities == ["noise_posterior", "refresh_noise", "vector_space"]
    assert (by["plain"].family, by["plain"].loss) == ("gaussian", "squared error")
    assert (by["invertible"].family, by["invertible"].loss) == ("laplace", "absolute error (L1)")
    assert by["invertible"].distribution == "acme-corr"
    # capabilities come from an instance; a required argument other than vocab_size is reported, not guessed
    assert by["needs_args"].samplers == [] and "needs arguments to build" in by["needs_args"].note
    assert "width" in by["needs_args"].note
    # token corruptions are probed with a vocabulary size, as the runner would fill it in from the data
    assert by["tokens"].note is None and by["tokens"].loss == "cross-entropy" and by["tokens"].samplers == ["any"]


def test_text_and_json(report):
    text = report.to_text()
    assert text.splitlines()[0] == "3 plugin(s), 1 failed"
    assert "acme-corr 2.5 [corr] loaded\n    corruption: plain, invertible, needs_args, tokens" in text
    assert "acme-vision 1.0 [vision] failed: import failed: ImportError: no module named 'cv2'" in text
    assert "corruption 'invertible' supports samplers: any, inv\n    from acme-corr; loss: laplace -> absolute " \
           "error (L1); capabilities: noise_posterior, refresh_noise, vector_space" in text
    assert "corruption 'needs_args' supports samplers: unknown (needs arguments to build" in text
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert {p["distribution"]: p["status"] for p in data["plugins"]}["acme-vision"] == "failed"
    assert sorted(data) == ["corruptions", "plugins", "settings"]


def test_settings_show_the_switches_and_the_switches_select_plugins(monkeypatch):
    monkeypatch.setenv("UDM_PLUGINS", "acme-samplers")
    rep = build_report(udm.load_registry(entry_points=_eps()))
    assert [p.distribution for p in rep.plugins] == ["acme-samplers"] and rep.corruptions == []
    assert rep.settings["UDM_PLUGINS"] == "acme-samplers" and "switches: UDM_PLUGINS=acme-samplers" in rep.to_text()
    monkeypatch.delenv("UDM_PLUGINS")
    monkeypatch.setenv("UDM_BLOCK_PLUGINS", "vision,acme-samplers")
    assert [p.distribution for p in build_report(udm.load_registry(entry_points=_eps())).plugins] == ["acme-corr"]
    monkeypatch.setenv("UDM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert build_report(udm.load_registry(entry_points=_eps())).plugins == []


def test_the_installed_builtins_are_all_reported(reg):
    rep = build_report(reg)
    builtin = [p for p in rep.plugins if p.distribution == "udm"]
    assert builtin and all(p.status == "loaded" and p.version == udm.__version__ for p in builtin)
    gauss = {c.name: c for c in rep.corruptions}["gaussian"]
    assert gauss.samplers == udm.supported_samplers(reg.create("corruption", "gaussian"), reg)
    assert {"ddpm", "ddim", "posterior", "heun"} <= set(gauss.samplers) and gauss.prediction == "v"


def test_main_json_and_strict_exit_code(capsys, monkeypatch):
    assert main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(p["distribution"] == "udm" for p in data["plugins"])
    monkeypatch.setattr("udm._registry._entry_points", lambda: _eps())
    monkeypatch.setenv("UDM_STRICT_PLUGINS", "1")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "udm plugins: plugin error: plugin acme-vision 1.0 (entry point 'vision'): failed to load: import " \
           "failed: ImportError: no module named 'cv2'. Fix or uninstall the distribution 'acme-vision'" in err
