"""Reusable checks for corruption and sampler plugins (docs/conformance.md).

* :func:`check_corruption` / :func:`assert_conforms`: the conformance kit a plugin author runs: the
  contract basics, the noise posterior, the refresh kernel, the schedule, the prior, and for the pinned
  samplers the marginal and joint checks with the oracle x0_hat = x_0. Every message names its statistic.
* :func:`marginal_check`: one sampler over one chain of times.
* :class:`Features`, :func:`default_features`, :func:`pair_features`: the named statistics the tests use.
* :class:`GaussianMixture`, :class:`FixedDenoiser`, :class:`MarkovChain`, :class:`MarkovOracle`: exact oracles;
  :class:`GaussianData`: N(mu, Sigma) with its exact log p, denoiser and posterior variance (likelihood tests).
* :func:`ks_two_sample`, :func:`ks_normal`: Kolmogorov-Smirnov tests with a stated error rate.
"""

from ._conformance import (DEFAULT_SAMPLER_OPTIONS, PINNED_SAMPLERS, CheckResult, ConformanceReport, assert_conforms,
                           check_corruption, marginal_check, plan_check_names)
from ._gaussian import GaussianData
from ._features import Features, default_features, pair_features
from ._markov import MarkovChain, MarkovOracle
from ._oracle import FixedDenoiser, GaussianMixture
from ._stats import KSResult, ks_normal, ks_two_sample

__all__ = [
    "GaussianMixture",
    "GaussianData",
    "FixedDenoiser",
    "MarkovChain",
    "MarkovOracle",
    "KSResult",
    "ks_two_sample",
    "ks_normal",
    "Features",
    "default_features",
    "pair_features",
    "CheckResult",
    "ConformanceReport",
    "PINNED_SAMPLERS",
    "DEFAULT_SAMPLER_OPTIONS",
    "marginal_check",
    "check_corruption",
    "assert_conforms",
    "plan_check_names",
]
