"""Likelihoods of trained diffusion models (docs/math.md, "Likelihoods").

:func:`likelihood` scores data under a model or a run directory with a registered estimator and returns a
:class:`LikelihoodResult` (nats and bits per dimension, the standard error, the per-term breakdown, the
settings). Estimators are plugins (:class:`EstimatorSpec`, the ``estimator`` kind); the linear-Gaussian ones
live here and are registered by the built-in ``likelihood`` plugin module (an entry point like any other):

* :func:`elbo_discrete`: the K-step ELBO with closed-form Gaussian KLs, for any q_theta variance;
* :func:`elbo_continuous`: its continuous-time limit (VDM), weighted by -d SNR/dt;
* :func:`ode`: the probability-flow likelihood (exact trace or Hutchinson; fixed-step or adaptive).

:func:`evaluate_nll` is what ``udm eval RUN --nll`` and ``eval: {nll: {...}}`` run.
"""

from ._api import decoding, estimator_options, likelihood
from ._elbo_continuous import elbo_continuous, resolve_continuous
from ._elbo_discrete import elbo_discrete, resolve_discrete
from ._ode import ode, resolve_ode
from ._result import BatchNll, LikelihoodResult, Terms
from ._run import NllOptions, eval_run, evaluate_nll, nll_schema, resolve_nll_config
from ._spec import Context, EstimatorSpec, default_estimator, resolve_estimator, supported_estimators

__all__ = ["likelihood", "LikelihoodResult", "Terms", "BatchNll", "EstimatorSpec", "Context", "supported_estimators",
           "resolve_estimator", "default_estimator", "elbo_discrete", "elbo_continuous", "ode", "resolve_discrete",
           "resolve_continuous", "resolve_ode", "evaluate_nll", "eval_run", "NllOptions", "nll_schema", "resolve_nll_config",
           "decoding", "estimator_options"]
