"""udm's pytest plugin (entry point ``pytest11: udm``): fixtures and one-line conformance tests.

Installed with udm, so a plugin author's tests get, with no conftest:

* ``udm_registry``: a fresh :func:`udm.load_registry` (installed plugins, honouring ``UDM_*`` switches);
* ``oracle_denoiser``: a factory ``oracle_denoiser(x0) -> (x_t, t, generator) -> x0`` (x0_hat = x_0);
* ``udm_conformance``: :func:`udm.testing.assert_conforms` bound to ``udm_registry``.

And one line that turns a corruption into a parametrised test, one test per check::

    from udm.testing.pytest_plugin import conformance_tests

    test_pixelate = conformance_tests(lambda: Pixelate(levels=2), lambda: bars(n=1), n=2000)

Each parameter is a check of :func:`udm.testing.check_corruption` (``shapes``, ``determinism``,
``t0_identity``, ``noise_posterior_explains_x_t``, ``noise_posterior_law``, ``refresh_noise_preserves_q``,
``schedule_matches_forward``, ``prior``, and ``marginal[<sampler>]`` / ``joint[<sampler>]`` for every
pinned sampler the corruption supports; docs/conformance.md). The suite runs once per test function and
each test asserts its own check.
Nothing here imports udm until a fixture or test runs, so pytest starts as fast as without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["udm_registry", "oracle_denoiser", "udm_conformance", "conformance_tests", "check_names"]


@pytest.fixture
def udm_registry():
    """A fresh registry of the installed plugins (``udm.load_registry()``)."""
    import udm

    return udm.load_registry()


@pytest.fixture
def oracle_denoiser() -> Callable[[Any], Any]:
    """Factory: ``oracle_denoiser(x0)`` is a denoiser that always answers x0_hat = x0 (the oracle of the
    marginal check), with the denoiser signature ``(x_t, t, generator) -> x0``."""
    from udm.testing import FixedDenoiser

    return FixedDenoiser


@pytest.fixture
def udm_conformance(udm_registry) -> Callable[..., Any]:
    """``udm_conformance(corruption, x0, **kwargs)``: run the conformance suite and fail with its report."""
    from udm.testing import assert_conforms

    def run(corruption: Any, x0: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("registry", udm_registry)
        return assert_conforms(corruption, x0, **kwargs)

    return run


def check_names(corruption: Any, registry: Any = None, samplers: Any = None, **kwargs: Any) -> list[str]:
    """The names of the checks :func:`udm.testing.check_corruption` runs on ``corruption`` (``kwargs`` as
    there: ``x0``, ``skip``, ``sampler_options``, ...)."""
    from udm.testing import plan_check_names

    return plan_check_names(corruption, registry=registry, samplers=samplers, **kwargs)


def conformance_tests(make_corruption: Callable[[], Any], make_x0: Callable[[], Any], **kwargs: Any):
    """A pytest test function parametrised over every conformance check of ``make_corruption()``.

    Args:
        make_corruption: builds the corruption (called at collection and once more to run the suite).
        make_x0: builds the data batch the suite uses (at least one example).
        kwargs: passed to :func:`udm.testing.check_corruption` (``n``, ``samplers``, ``time_type``,
            ``sampler_options``, ``alpha``, ``seed``, ...).
    Returns:
        ``test(check)``; assign it to a module-level name starting with ``test_``.
    """
    names = check_names(make_corruption(), x0=make_x0(), **kwargs)
    cache: dict[str, Any] = {}

    @pytest.mark.parametrize("check", names)
    def test(check: str) -> None:
        from udm.testing import check_corruption

        if "report" not in cache:
            cache["report"] = check_corruption(make_corruption(), make_x0(), **kwargs)
        report = cache["report"]
        results = [r for r in report.results if r.name == check]
        assert results, f"conformance check {check!r} did not run; the report was:\n{report}"
        failed = [r for r in results if not r.passed]
        assert not failed, f"conformance check {check!r} failed:\n" + "\n".join(f"  {r.detail}" for r in failed)

    return test
