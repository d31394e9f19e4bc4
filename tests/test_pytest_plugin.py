"""udm.testing's pytest plugin, as a plugin author meets it: loaded through the ``pytest11`` entry point
(no conftest), fixtures available, and ``conformance_tests`` giving one test per check that fails for
a broken corruption and passes for a correct one."""

from __future__ import annotations

import importlib.metadata as metadata

pytest_plugins = ["pytester"]

AUTHOR_TESTS = '''
import torch
import udm
from udm.testing.pytest_plugin import conformance_tests


class Shift(udm.GaussianNoise, udm.Corruption):
    """x_t = (1 - t) x_0 + t eps; noise_posterior exact unless BUG."""

    name = "shift"
    bug = False

    def forward(self, x0, eps, t):
        t = udm.append_dims(t, x0.ndim).to(x0.dtype)
        return (1 - t) * x0 + t * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator)

    def noise_posterior(self, x_t, x0, t, generator=None):
        t = udm.append_dims(t, x0.ndim).to(x0.dtype)
        eps = (x_t - (1 - t) * x0) / t
        return 2 * eps if self.bug else eps


class Buggy(Shift):
    bug = True


x0 = lambda: torch.tensor([[0.5, -1.0]])
test_good = conformance_tests(Shift, x0, n=1000, samplers=["invert", "naive"])
test_bad = conformance_tests(Buggy, x0, n=1000, samplers=["invert", "naive"])


def test_fixtures(udm_registry, oracle_denoiser, udm_conformance):
    assert "invert" in udm_registry.names("sampler")
    x = torch.ones(3, 2)
    assert oracle_denoiser(x)(torch.zeros(3, 2), torch.ones(3)) is x
    assert udm_conformance(Shift(), x0(), n=500, samplers=["naive"]).passed
'''


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (ep,) = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "udm"]
    assert ep.value == "udm.testing.pytest_plugin" and ep.dist.name == "udm"


def test_conformance_tests_one_test_per_check_and_fixtures(pytester):
    pytester.makepyfile(test_author=AUTHOR_TESTS)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    # fixtures; good: 11 checks (shapes, determinism, t0_identity, noise_posterior_explains_x_t,
    # noise_posterior_law, refresh_noise_preserves_q, prior, marginal/joint[invert], marginal/joint[naive]);
    # bad: the 4 that involve its noise posterior fail, 7 pass
    result.assert_outcomes(passed=1 + 11 + 7, failed=4)
    result.stdout.fnmatch_lines(["*test_bad*noise_posterior_explains_x_t*", "*test_bad*noise_posterior_law*",
                                 "*test_bad*marginal*invert*", "*test_bad*joint*invert*"])
    assert "test_good" not in "\n".join(line for line in result.outlines if line.startswith("FAILED"))
