"""The README's two commands: CI runs them verbatim, and the set-up installs everything the tests import."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_reader():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_commands


readme_commands = _load_reader()
SETUP, TESTS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])


def test_the_two_commands_install_cpu_torch_first_then_udm_and_the_example_plugin():
    assert SETUP.startswith("python -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ")
    assert SETUP.index("torch==2.13.0") < SETUP.index("pip install -e")
    # the example plugin after udm itself: its `udm>=0.1` must find the checkout, not an unrelated "Udm" on PyPI
    assert SETUP.index('pip install -e ".[') < SETUP.index("&& pip install ./examples/udm-pixelate &&")
    assert SETUP.endswith("&& udm run examples/gaussian_discrete.yaml")
    assert TESTS == "python -m pytest -q"
    torch_req = [r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                 if _requirement_name(r) == "torch"]
    assert torch_req == ["torch>=2.1"]  # a loose range: users keep their own (CUDA) torch


def test_ci_runs_exactly_the_readme_commands():
    script = (ROOT / ".ci" / "run").read_text()
    assert "commands=$(python3 .ci/readme_commands.py README.md)" in script
    assert 'bash -euo pipefail -c "$commands\n' in script  # verbatim, then the CI additions in the same shell
    additions = script.split('bash -euo pipefail -c "$commands\n', 1)[1]
    assert "python -m pytest -q -m slow" in additions and "pip install -q -e '.[tensorboard]'" in additions
    assert "pip install torch" not in additions  # CI does not install anything the README's set-up should


def test_the_reader_refuses_a_readme_without_exactly_two_commands():
    with pytest.raises(ValueError, match=r"README\.md: the section '## Two commands' must exist"):
        readme_commands("# udm\n")
    with pytest.raises(ValueError, match=r"must hold exactly two one-line bash blocks \(set-up, tests\); got \['a'\]"):
        readme_commands("# udm\n\n## Two commands\n\n```bash\na\n```\n\n## Next\n\n```bash\nb\n```\n")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_setup_installs_every_distribution_the_tests_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r'pip install -e "\.\[([a-z,]+)\]"', SETUP).group(1).split(",")
    installed = {_requirement_name(r) for r in project["dependencies"]}
    installed |= {_requirement_name(r) for e in extras for r in project["optional-dependencies"][e]}
    installed |= {"udm", "udm-pixelate"}  # the project itself and ./examples/udm-pixelate
    optional = {"tensorboard"}  # imported only after pytest.importorskip; CI installs the extra
    local = {"udm", "conftest", "udm_pixelate"} | {f.stem for f in (ROOT / "tests").glob("*.py")}  # test helpers
    dists = packages_distributions()
    files = sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "examples" / "udm-pixelate" / "tests").glob("*.py"))
    needed = {}
    for f in files:
        for module in _imported_modules(f) - set(sys.stdlib_module_names) - local:
            for dist in dists.get(module, [module]):
                needed.setdefault(_norm(dist), f.name)
    missing = {d: f for d, f in needed.items() if d not in installed | optional}
    assert not missing, f"imported by the tests but not installed by the README's set-up: {missing}"
    assert {"matplotlib", "pillow", "scikit-learn", "pytest"} <= installed
