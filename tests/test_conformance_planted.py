"""The conformance kit against planted bugs (tests/planted_bugs.py): every planted bug fails the kit, run with
its defaults, with a message that names the check and the statistic; the correct corruptions pass."""

from __future__ import annotations

import re

import pytest

from planted_bugs import BUGS, CORRECT, X0
from udm.testing import check_corruption

N = 2000
#: every failure message states a statistic with its value (and, for tests, the threshold)
STATISTIC = re.compile(r"KS D=\d|max \|[^|]+\| = \d|rows (off|differ|changed)|\d+ of \d+ rows|z-score|"
                       r"sample_\w+ must be a function of the generator|forward must keep shape and dtype")


@pytest.mark.parametrize("name", CORRECT)
def test_the_correct_corruptions_pass(reg, name):
    make, kind = CORRECT[name]
    report = check_corruption(make(), X0[kind], registry=reg, n=N, fine_steps=20)
    assert report.passed, str(report)
    assert {"noise_posterior_explains_x_t", "noise_posterior_law", "refresh_noise_preserves_q", "prior",
            "joint[posterior]", "joint[invert]"} <= {r.name for r in report.results}


@pytest.mark.parametrize("name", BUGS)
def test_every_planted_bug_fails_with_a_named_check_and_statistic(reg, name):
    make, kind, expected = BUGS[name]
    report = check_corruption(make(), X0[kind], registry=reg, n=N, fine_steps=20)
    failed = {r.name for r in report.failures}
    assert failed & expected, f"{name}: expected a failure of {sorted(expected)}; report:\n{report}"
    for r in report.failures:
        assert STATISTIC.search(r.detail), f"{r.name}: the message names no statistic: {r.detail}"
    # the report's text leads with the check's name
    assert any(f"[FAIL] {check}: " in str(report) for check in expected & failed)
