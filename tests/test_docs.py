"""The documentation is executed and checked against the code.

* Every ```python block of each page in docs/ runs, in order, in one namespace per page (cwd: the repo).
* Every ```yaml block that is a complete experiment validates as ``udm check`` would.
* docs/reference.md has one section per hook in udm/hookspecs.py whose heading is the hook's exact
  signature, e.g. ``## `udm_register_corruptions(register)` ``, and no heading for a hook that does not exist.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from udm import hookspecs
from udm.config import parse_config, required_sections
from udm.experiment import Experiment

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["index.md", "tutorial.md", "howto-corruption.md", "howto-token-corruption.md", "howto-sampler.md",
         "howto-time-type.md", "howto-model.md", "howto-variance.md", "howto-likelihood.md", "howto-publish.md",
         "data.md", "runs.md", "safety.md", "conformance.md", "reference.md", "explanation.md", "math.md"]


def code_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced block of ``lang``."""
    out = []
    for m in re.finditer(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        out.append((text[: m.start()].count("\n") + 2, m.group(1)))
    return out


def hook_signatures() -> dict[str, str]:
    """hook name -> ``name(params)`` for every hookspec in udm.hookspecs."""
    return {name: f"{name}{inspect.signature(fn)}" for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")}


def reference_problems(text: str, hooks: dict[str, str]) -> list[str]:
    """What is wrong with the reference page's hook sections (empty when it is complete and exact)."""
    headings = [h.strip("` ") for h in re.findall(r"^#{2,3} +(`?udm_\w+.*?)\s*$", text, re.M)]
    problems = [f"hook {name} has no section headed `{sig}`" for name, sig in hooks.items() if sig not in headings]
    problems += [f"heading `{h}` is not the signature of a hook (hooks: {', '.join(hooks.values())})"
                 for h in headings if h not in hooks.values()]
    problems += [f"hook section `{h}` appears {headings.count(h)} times" for h in set(headings) if headings.count(h) > 1]
    return problems


def test_every_page_exists_and_links_resolve():
    for page in PAGES:
        assert (DOCS / page).is_file(), f"docs/{page} is missing"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)\)", (DOCS / page).read_text()):
            assert (DOCS / target).resolve().exists(), f"docs/{page}: broken link {target}"


@pytest.mark.parametrize("page", [p for p in PAGES if (DOCS / p).is_file() and code_blocks((DOCS / p).read_text(), "python")])
def test_python_blocks_run(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"docs_{Path(page).stem.replace('-', '_')}"}
    for line, code in code_blocks((DOCS / page).read_text(), "python"):
        try:
            exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as exc:
            raise AssertionError(f"docs/{page}, the python block at line {line} raised "
                                 f"{type(exc).__name__}: {exc}") from exc


def test_yaml_experiments_validate(reg):
    checked = 0
    for page in PAGES:
        for line, text in code_blocks((DOCS / page).read_text(), "yaml"):
            cfg = parse_config(text, f"docs/{page}:{line}")
            if all(section in cfg for section in required_sections()):
                Experiment.from_dict(cfg, reg, f"docs/{page}:{line}")
                checked += 1
    assert checked >= 2, "the tutorial and the publishing guide each show a complete experiment"


def test_reference_has_one_section_per_hook_headed_by_its_signature():
    hooks = hook_signatures()
    assert len(hooks) == len(hookspecs.KINDS) and set(hooks) == {k.hook for k in hookspecs.KINDS.values()}
    problems = reference_problems((DOCS / "reference.md").read_text(), hooks)
    assert not problems, "docs/reference.md: " + "; ".join(problems)


def test_reference_check_catches_a_missing_section_and_a_changed_signature():
    text = (DOCS / "reference.md").read_text()
    hooks = hook_signatures()
    missing = text.replace("## `udm_register_metrics(register)`", "## Metrics")
    assert reference_problems(missing, hooks) == ["hook udm_register_metrics has no section headed "
                                                  "`udm_register_metrics(register)`"]
    changed = {**hooks, "udm_register_models": "udm_register_models(register, config)"}
    assert "hook udm_register_models has no section headed `udm_register_models(register, config)`" \
        in reference_problems(text, changed)
    extra = text + "\n## `udm_register_losses(register)`\n"
    assert any("udm_register_losses(register)` is not the signature of a hook" in p
               for p in reference_problems(extra, hooks))
