"""Reusable checks for corruption and sampler plugins (DESIGN.md §4).

* :class:`GaussianMixture`: data with an exact denoiser E[x_0 | x_t] for affine Gaussian corruptions.
* :class:`FixedDenoiser`: the oracle x0_hat = x_0 used by the marginal check.
* :class:`MarkovChain`, :class:`MarkovOracle`: an exact oracle for token corruptions (posterior marginals, TV).
* :func:`ks_two_sample`: a two-sample Kolmogorov-Smirnov test with a stated error rate.
* :func:`marginal_check` and :func:`check_corruption`: the conformance suite a plugin author runs.
"""

from ._conformance import CheckResult, ConformanceReport, assert_conforms, check_corruption, marginal_check
from ._markov import MarkovChain, MarkovOracle
from ._oracle import FixedDenoiser, GaussianMixture
from ._stats import KSResult, ks_two_sample

__all__ = [
    "GaussianMixture",
    "FixedDenoiser",
    "MarkovChain",
    "MarkovOracle",
    "KSResult",
    "ks_two_sample",
    "CheckResult",
    "ConformanceReport",
    "marginal_check",
    "check_corruption",
    "assert_conforms",
]
