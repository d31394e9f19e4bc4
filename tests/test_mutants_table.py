"""tools/mutants.py's table stays pointed at the code: every snippet occurs exactly once in its file (a change
that moves a mutated line must re-point the row), and every row names existing tests. The mutants themselves
run in a separate CI step (``python tools/mutants.py --no-baseline`` after the suite; about 3 minutes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutants():
    spec = importlib.util.spec_from_file_location("udm_tools_mutants", ROOT / "tools" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["udm_tools_mutants"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["udm_tools_mutants"]


def test_every_snippet_matches_exactly_once(mutants, capsys):
    assert mutants.main(["--check"]) == 0, capsys.readouterr().out


def test_every_row_names_existing_test_files_and_unique_names(mutants):
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names))
    for m in mutants.MUTANTS:
        files = [a.split("::")[0] for a in m.tests if a.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), m


def test_selection_and_errors(mutants, capsys):
    assert mutants.main(["--list", "residual"]) == 0
    assert "residual-as-invert" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"tools/mutants.py: mutant names must be in the table \(--list\); got 'nope'"):
        mutants.main(["--list", "nope"])
    stale = mutants.Mutant("stale", "udm/families.py", "this text is not in the file", "x", ("tests/test_cold.py",))
    with pytest.raises(mutants.Stale, match=r"stale: the snippet must occur exactly once in udm/families.py; found 0"):
        mutants._apply(stale)
