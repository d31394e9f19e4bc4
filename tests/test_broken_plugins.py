"""Deliberately broken third-party plugins, installed for real (a dist-info folder on the path): each is
reported by ``udm plugins``, does not break other commands, and in strict mode fails with a message that
names the distribution and the fix.

The four cases: an import error, a duplicate name, a misspelled hook, a wrong method signature.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import udm
from udm.errors import PluginError

ROOT = Path(__file__).resolve().parents[1]

#: distribution -> (module, source, what the report's error must say)
CASES = {
    "udm-broken-import": (
        "udm_broken_import", "import udm_no_such_dependency  # a dependency that is not installed\n",
        r"import failed: ModuleNotFoundError: No module named 'udm_no_such_dependency'"),
    "udm-broken-dup": (
        "udm_broken_dup",
        "import udm\n\ndef two_moons(n=10, seed=0):\n    return None\n\n"
        "@udm.hookimpl\ndef udm_register_datasets(register):\n    register(two_moons)\n",
        r"dataset 'two_moons': names must be unique; registered by both udm 0\.1\.0 \(entry point 'toy2d'\) and "
        r"udm-broken-dup 0\.1\.0 \(entry point 'broken_dup'\)\. Uninstall one, or block one with UDM_BLOCK_PLUGINS"),
    "udm-broken-hook": (
        "udm_broken_hook", "import udm\n\n@udm.hookimpl\ndef udm_register_corruption(register):\n    pass\n",
        r"unknown hook 'udm_register_corruption'.*Hooks must be one of: udm_register_corruptions, .*"
        r"Did you mean 'udm_register_corruptions'\?"),
    "udm-broken-sig": (
        "udm_broken_sig",
        "import udm\n\nclass Bad(udm.GaussianNoise, udm.Corruption):\n    name = 'bad_sig'\n\n"
        "    def forward(self, x0, t):\n        return x0\n\n"
        "    def sample_prior(self, shape, generator, *, device=None, dtype=None):\n        return None\n\n"
        "@udm.hookimpl\ndef udm_register_corruptions(register):\n    register(Bad)\n",
        r"corruption 'bad_sig': method forward must accept \(x0, eps, t\); got forward\(self, x0, t\)\. "
        r"Define it as def forward\(self, x0, eps, t\)"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the four broken distributions as installed packages (module + dist-info)."""
    root = tmp_path_factory.mktemp("site")
    for dist, (module, source, _) in CASES.items():
        (root / f"{module}.py").write_text(source)
        info = root / f"{module}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[udm]\n{module.removeprefix('udm_')} = {module}\n")
    return root


def _eps(site: Path) -> list:
    """The installed entry points, the broken ones included (``site`` is on ``sys.path``)."""
    eps = list(metadata.entry_points(group="udm"))
    assert {ep.dist.name for ep in eps} >= set(CASES), "the broken distributions must be found on sys.path"
    return eps


def _udm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UDM_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "udm", *args], capture_output=True, text=True, env=environ,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("dist", sorted(CASES))
def test_each_broken_plugin_is_reported_and_isolated(site, monkeypatch, dist):
    monkeypatch.syspath_prepend(str(site))
    reg = udm.load_registry(entry_points=_eps(site), strict=False)
    (info,) = [p for p in reg.plugins if p.distribution == dist]
    assert info.status == "failed" and info.registered == {}
    assert re.search(CASES[dist][2], info.error), info.error  # the text a user reads in `udm plugins`
    assert all(p.status == "loaded" for p in reg.plugins if p.distribution == "udm"), "built-ins must still load"
    assert "gaussian" in reg.names("corruption") and "ddim" in reg.names("sampler")


@pytest.mark.parametrize("dist", sorted(CASES))
def test_strict_mode_names_the_distribution_and_the_fix(site, monkeypatch, dist):
    monkeypatch.syspath_prepend(str(site))
    eps = [ep for ep in _eps(site) if ep.dist.name in (dist, "udm")]
    entry_point = CASES[dist][0].removeprefix("udm_")
    with pytest.raises(PluginError, match=rf"plugin {dist} 0\.1\.0 \(entry point '{entry_point}'\): failed to load: "
                                          rf".*{CASES[dist][2]}.* Fix or uninstall the distribution '{dist}', "
                                          rf"or block it with UDM_BLOCK_PLUGINS={entry_point}\."):
        udm.load_registry(entry_points=eps, strict=True)


def test_cli_reports_all_four_and_other_commands_still_work(site, tmp_path):
    out = _udm(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    failed = {p["distribution"]: p for p in report["plugins"] if p["status"] == "failed"}
    assert sorted(failed) == sorted(CASES)
    for dist, (_, _, pattern) in CASES.items():
        assert failed[dist]["version"] == "0.1.0" and re.search(pattern, failed[dist]["error"]), dist
    assert {"gaussian", "blur"} <= {c["name"] for c in report["corruptions"]}
    # an experiment that names none of the broken plugins validates as usual
    exp = tmp_path / "exp.yaml"
    exp.write_text((ROOT / "examples" / "gaussian_discrete.yaml").read_text().replace("two_moons", "eight_gaussians"))
    check = _udm(site, "check", str(exp))
    assert check.returncode == 0 and "OK (corruption=gaussian" in check.stdout, check.stderr
    # the name two plugins claim is an error that names both distributions and the fix
    clash = _udm(site, "check", str(ROOT / "examples" / "gaussian_discrete.yaml"))
    assert clash.returncode == 2
    assert "registered by both udm 0.1.0 (entry point 'toy2d') and udm-broken-dup 0.1.0" in clash.stderr
    assert "UDM_BLOCK_PLUGINS" in clash.stderr


def test_cli_strict_fails_and_block_switch_fixes_it(site):
    strict = _udm(site, "plugins", UDM_STRICT_PLUGINS="1")
    assert strict.returncode == 2
    assert "udm plugins: plugin error: plugin udm-broken-dup 0.1.0 (entry point 'broken_dup'): failed to load" \
        in strict.stderr and "Fix or uninstall the distribution 'udm-broken-dup'" in strict.stderr
    blocked = _udm(site, "plugins", UDM_STRICT_PLUGINS="1",
                   UDM_BLOCK_PLUGINS="udm-broken-dup,udm-broken-hook,udm-broken-import,broken_sig")
    assert blocked.returncode == 0, blocked.stderr
    assert "broken" not in blocked.stdout.replace("UDM_BLOCK_PLUGINS=udm-broken-dup,udm-broken-hook,"
                                                  "udm-broken-import,broken_sig", "")
