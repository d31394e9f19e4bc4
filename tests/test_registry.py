"""The plugin registry: entry-point loading with fake distributions, isolation of broken plugins,
every registry error message, the environment switches, and no work at import time."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

import udm
from udm.errors import PluginError, UnknownPluginError


# --------------------------------------------------------------------------- fakes
class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class FakeEntryPoint:
    """What ``importlib.metadata.EntryPoint`` offers the registry: name, value, load(), dist."""

    def __init__(self, name: str, target, dist: str = "fake-dist", version: str = "1.0") -> None:
        self.name, self._target = name, target
        self.value = f"fake_{name}.plugin"
        self.dist = FakeDist(dist, version)

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def plugin_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


class Toy(udm.GaussianNoise, udm.Corruption):
    name = "toy"

    def forward(self, x0, eps, t):
        return x0 + udm.append_dims(t, x0.ndim).to(x0.dtype) * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator)


def corruption_plugin(name: str, *objs) -> types.ModuleType:
    @udm.hookimpl
    def udm_register_corruptions(register):
        for obj in objs:
            register(obj)

    return plugin_module(name, udm_register_corruptions=udm_register_corruptions)


def metric_plugin(name: str, fn_name: str = "score") -> types.ModuleType:
    def fn(samples, reference, generator=None):
        return 0.0

    fn.__name__ = fn_name

    @udm.hookimpl
    def udm_register_metrics(register):
        register(fn)

    return plugin_module(name, udm_register_metrics=udm_register_metrics)


def status(reg: udm.Registry, name: str) -> udm.PluginInfo:
    (info,) = [p for p in reg.plugins if p.name == name]
    return info


# --------------------------------------------------------------- happy path
def test_fake_entry_point_registers_with_its_distribution():
    reg = udm.load_registry(entry_points=[FakeEntryPoint("toyplug", corruption_plugin("m", Toy), "toy-dist", "2.3")])
    assert reg.names("corruption") == ["toy"]
    assert reg.get("corruption", "toy") is Toy
    info = reg.provider("corruption", "toy")
    assert (info.distribution, info.version, info.name, info.status) == ("toy-dist", "2.3", "toyplug", "loaded")
    assert info.registered == {"corruption": ["toy"]}
    assert info.label == "toy-dist 2.3 (entry point 'toyplug')"
    assert isinstance(reg.create("corruption", "toy"), Toy)


def test_builtins_are_found_through_installed_entry_points(reg):
    for kind, name in [("corruption", "gaussian"), ("time", "discrete"), ("time", "continuous"),
                       ("sampler", "invert"), ("sampler", "ddpm"), ("model", "mlp"),
                       ("dataset", "two_moons"), ("metric", "sliced_wasserstein")]:
        info = reg.provider(kind, name)
        assert info.distribution == "udm", (kind, name, info)
        assert info.value.startswith("udm.plugins."), info.value
    assert all(p.status == "loaded" for p in reg.plugins), [p for p in reg.plugins if p.status != "loaded"]
    assert udm.registry() is udm.registry()
    assert udm.registry(reload=True) is not None


def test_importing_udm_builds_no_plugin_manager_and_imports_no_plugin():
    code = (
        "import sys, pluggy\n"
        "built = []\n"
        "orig = pluggy.PluginManager.__init__\n"
        "def spy(self, *a, **k):\n"
        "    built.append(a)\n"
        "    orig(self, *a, **k)\n"
        "pluggy.PluginManager.__init__ = spy\n"
        "import udm, udm.testing, udm.samplers, udm.linear_gaussian, udm.bases\n"
        "assert not built, built\n"
        "assert not [m for m in sys.modules if m.startswith('udm.plugins')], sorted(sys.modules)\n"
        "assert udm._registry._DEFAULT is None\n"
        "udm.load_registry()\n"
        "assert built\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------- failures, isolated
def test_broken_import_is_reported_and_isolated():
    eps = [FakeEntryPoint("broken", ImportError("No module named 'zzz'"), "bad-dist", "0.1"),
           FakeEntryPoint("good", corruption_plugin("g", Toy), "good-dist")]
    reg = udm.load_registry(entry_points=eps)
    bad = status(reg, "broken")
    assert bad.status == "failed"
    assert bad.error == "import failed: ImportError: No module named 'zzz'"
    assert status(reg, "good").status == "loaded"
    assert reg.get("corruption", "toy") is Toy  # the other plugin still works
    # asking for a missing name names the failed plugin (distribution and entry point)
    with pytest.raises(UnknownPluginError, match=r"Plugins that failed to load \(run `udm plugins`\): "
                                                 r"bad-dist 0\.1 \(entry point 'broken'\): import failed"):
        reg.get("corruption", "blur")


def test_duplicate_name_across_distributions_names_both_and_get_raises():
    eps = [FakeEntryPoint("pa", corruption_plugin("a", Toy), "dist-a", "1.0"),
           FakeEntryPoint("pb", corruption_plugin("b", Toy), "dist-b", "2.0")]
    reg = udm.load_registry(entry_points=eps)
    msg = (r"corruption 'toy': names must be unique; registered by both dist-a 1\.0 \(entry point 'pa'\) "
           r"and dist-b 2\.0 \(entry point 'pb'\)\. Uninstall one, or block one with UDM_BLOCK_PLUGINS=")
    with pytest.raises(PluginError, match=msg):
        reg.get("corruption", "toy")
    assert status(reg, "pb").status == "failed"
    assert "names must be unique" in status(reg, "pb").error
    # blocking one of them resolves the conflict
    reg2 = udm.load_registry(entry_points=eps, block=["dist-b"])
    assert reg2.provider("corruption", "toy").distribution == "dist-a"


def test_misspelled_hook_is_caught_by_check_pending():
    @udm.hookimpl
    def udm_register_corruption(register):  # singular: not a udm hook
        register(Toy)

    eps = [FakeEntryPoint("typo", plugin_module("typo", udm_register_corruption=udm_register_corruption)),
           FakeEntryPoint("good", metric_plugin("good"), "good-dist")]
    reg = udm.load_registry(entry_points=eps)
    info = status(reg, "typo")
    assert info.status == "failed"
    assert "udm_register_corruption" in info.error
    assert "Hooks must be one of: udm_register_corruptions, udm_register_schedules, udm_register_time_types" in info.error
    assert reg.names("corruption") == []
    assert reg.names("metric") == ["score"]  # loading continued
    with pytest.raises(PluginError, match=r"plugin fake-dist 1\.0 \(entry point 'typo'\): failed to load: "
                                          r".*udm_register_corruption.*Hooks must be one of"):
        udm.load_registry(entry_points=eps[:1], strict=True)


def test_unmarked_hook_is_reported():
    def udm_register_corruptions(register):  # forgot @udm.hookimpl
        register(Toy)

    reg = udm.load_registry(entry_points=[FakeEntryPoint("nomark", plugin_module(
        "nomark", udm_register_corruptions=udm_register_corruptions))])
    assert status(reg, "nomark").error == (
        "invalid hook implementation: udm_register_corruptions is not marked with @udm.hookimpl; add the decorator")


def test_hook_that_raises_is_isolated_and_its_registrations_rolled_back():
    @udm.hookimpl
    def udm_register_corruptions(register):
        register(Toy)

    @udm.hookimpl
    def udm_register_metrics(register):
        raise RuntimeError("boom")

    eps = [FakeEntryPoint("raiser", plugin_module("r", udm_register_corruptions=udm_register_corruptions,
                                                  udm_register_metrics=udm_register_metrics)),
           FakeEntryPoint("other", metric_plugin("o", "fine"), "other-dist")]
    reg = udm.load_registry(entry_points=eps)
    info = status(reg, "raiser")
    assert info.status == "failed"
    assert info.error == "udm_register_metrics raised RuntimeError: boom"
    assert info.registered == {}
    assert reg.names("corruption") == []  # Toy, registered before the raise, was rolled back
    assert reg.names("metric") == ["fine"]
    with pytest.raises(UnknownPluginError, match="udm_register_metrics raised RuntimeError: boom"):
        reg.get("corruption", "toy")


def test_object_without_a_name():
    class Anonymous:
        def __call__(self, samples, reference, generator=None):
            return 0.0

    @udm.hookimpl
    def udm_register_metrics(register):
        register(Anonymous())

    eps = [FakeEntryPoint("anon", plugin_module("anon", udm_register_metrics=udm_register_metrics))]
    msg = (r"fake-dist 1\.0 \(entry point 'anon'\), udm_register_metrics: register\(\) needs a name; got "
           r"<.*Anonymous object at .*> without one\. Pass register\(obj, name='\.\.\.'\) or give the object "
           r"a `name` attribute\.")
    assert pytest.raises(PluginError, udm.load_registry, entry_points=eps, strict=True).match(msg)
    reg = udm.load_registry(entry_points=eps)
    assert "register() needs a name" in status(reg, "anon").error


def test_corruption_missing_required_methods():
    class Half:
        name = "half"

        def forward(self, x0, eps, t):
            return x0

    eps = [FakeEntryPoint("half", corruption_plugin("h", Half))]
    with pytest.raises(PluginError, match=r"fake-dist 1\.0 \(entry point 'half'\), udm_register_corruptions: "
                                          r"corruption 'half' must provide sample_noise, forward, sample_prior; "
                                          r"missing sample_noise, sample_prior\. See the corruption contract"):
        udm.load_registry(entry_points=eps, strict=True)


def test_non_callable_factory_and_double_registration():
    @udm.hookimpl
    def udm_register_metrics(register):
        register(42, name="answer")

    eps = [FakeEntryPoint("num", plugin_module("n", udm_register_metrics=udm_register_metrics))]
    with pytest.raises(PluginError, match=r"udm_register_metrics: metric 'answer' must be callable; got 42\."):
        udm.load_registry(entry_points=eps, strict=True)

    twice = FakeEntryPoint("twice", corruption_plugin("t", Toy, Toy))
    with pytest.raises(PluginError, match=r"corruption 'toy': names must be registered once per plugin; got a second register\(\) call"):
        udm.load_registry(entry_points=[twice], strict=True)


# --------------------------------------------------------------- lookups
def test_unknown_name_lists_available_and_suggests(reg):
    with pytest.raises(UnknownPluginError, match=r"corruption 'gausian': name must be a registered corruption; "
                                                 r"got 'gausian'\. Available: .*gaussian.*\. "
                                                 r"Did you mean 'gaussian'\?"):
        reg.get("corruption", "gausian")
    with pytest.raises(UnknownPluginError, match=r"sampler 'ddimm'.*Available: .*\bddim, ddpm\b.*Did you mean 'ddim'\?"):
        reg.get("sampler", "ddimm")


def test_unknown_kind(reg):
    with pytest.raises(UnknownPluginError, match=r"registry: kind must be one of corruption, schedule, time, sampler, corrector, "
                                                 r"model, dataset, metric, estimator; got 'corruptions'\. Did you mean 'corruption'\?"):
        reg.names("corruptions")


def test_create_errors(reg):
    with pytest.raises(PluginError, match=r"sampler 'ddim': create\(\) must be used for factories; .*registry.get"):
        reg.create("sampler", "ddim")
    with pytest.raises(udm.ConfigError, match=r"corruption 'gaussian': keyword arguments must match its signature .*"
                       r"unexpected keyword argument 'shedule'.*Valid keys: schedule, .*Did you mean 'schedule'\?"):
        reg.create("corruption", "gaussian", shedule="cosine")

    def broken_inside(**kw):  # a TypeError raised *inside* a factory is not mistaken for a bad key
        raise TypeError("bug in the plugin")

    reg._table["dataset"]["__broken"] = reg._table["dataset"]["two_moons"].__class__(broken_inside, None)
    try:
        with pytest.raises(TypeError, match="bug in the plugin"):
            reg.create("dataset", "__broken")
    finally:
        del reg._table["dataset"]["__broken"]


# --------------------------------------------------------------- switches
def _two():
    return [FakeEntryPoint("pa", corruption_plugin("a", Toy), "dist-a"),
            FakeEntryPoint("pm", metric_plugin("m"), "dist-m")]


def test_env_only_and_block(monkeypatch):
    monkeypatch.setenv("UDM_PLUGINS", "pa")
    reg = udm.load_registry(entry_points=_two())
    assert [p.name for p in reg.plugins] == ["pa"]
    monkeypatch.setenv("UDM_PLUGINS", "dist-m, dist-a")  # distribution names work too
    assert [p.name for p in udm.load_registry(entry_points=_two()).plugins] == ["pa", "pm"]
    monkeypatch.delenv("UDM_PLUGINS")
    monkeypatch.setenv("UDM_BLOCK_PLUGINS", "dist-a")
    reg = udm.load_registry(entry_points=_two())
    assert [p.name for p in reg.plugins] == ["pm"] and reg.names("corruption") == []
    # an explicit argument wins over the environment
    assert [p.name for p in udm.load_registry(entry_points=_two(), block=[]).plugins] == ["pa", "pm"]


def test_env_disable_autoload(monkeypatch):
    monkeypatch.setenv("UDM_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = udm.load_registry(entry_points=_two())
    assert reg.plugins == [] and reg.names("metric") == []
    assert udm.load_registry(entry_points=_two(), autoload=True).names("metric") == ["score"]
    monkeypatch.setenv("UDM_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert len(udm.load_registry(entry_points=_two()).plugins) == 2
    monkeypatch.setenv("UDM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert udm.load_registry().plugins == []  # the installed entry points too


def test_env_strict(monkeypatch):
    eps = [FakeEntryPoint("broken", ImportError("nope"), "bad-dist", "0.1")]
    assert status(udm.load_registry(entry_points=eps), "broken").status == "failed"
    monkeypatch.setenv("UDM_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin bad-dist 0\.1 \(entry point 'broken'\): failed to load: "
                                          r"import failed: ImportError: nope\. Fix or uninstall the distribution "
                                          r"'bad-dist', or block it with UDM_BLOCK_PLUGINS=broken\."):
        udm.load_registry(entry_points=eps)
    assert udm.load_registry(entry_points=eps, strict=False).plugins[0].status == "failed"
