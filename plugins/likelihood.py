"""The built-in likelihood estimators (docs/math.md, "Likelihoods"), registered like any third-party estimator.

=================  =========================================================  ===================================
estimator          what it computes                                           corruptions
=================  =========================================================  ===================================
elbo_discrete      K-step ELBO, closed-form Gaussian KLs, any q_theta variance linear-Gaussian (gaussian, blur, ...)
elbo_continuous    continuous-time ELBO (VDM), -d SNR/dt weighted              linear-Gaussian
ode                probability-flow likelihood (exact trace or Hutchinson)      linear-Gaussian
elbo_masked        MDLM's ELBO; the exact bound of exact-count masking          mask
elbo_deletion      the deletion chain's ELBO over all its steps                 delete (independent deletion)
=================  =========================================================  ===================================
"""

from __future__ import annotations

from typing import Any

import udm
from udm import likelihoods as L

from ._elbo_deletion import accepts_deletion, elbo_deletion, resolve_deletion
from ._elbo_masked import accepts_mask, elbo_masked, resolve_masked

LINEAR_GAUSSIAN = "linear-Gaussian with continuous data (gaussian, blur, or any udm.LinearGaussian)"


def _linear_gaussian(corruption: Any) -> bool:
    return "linear_gaussian" in udm.capabilities(corruption) and getattr(corruption, "data_kind", "") == "continuous"


def specs() -> list[udm.EstimatorSpec]:
    return [
        udm.EstimatorSpec("elbo_discrete", L.elbo_discrete, _linear_gaussian, LINEAR_GAUSSIAN,
                          "K-step ELBO, closed-form Gaussian KLs (small, large or any variance source)",
                          decoders=("density", "discretised"), default_for=("discrete",),
                          resolve=L.resolve_discrete),
        udm.EstimatorSpec("elbo_continuous", L.elbo_continuous, _linear_gaussian, LINEAR_GAUSSIAN,
                          "continuous-time ELBO (VDM), -dSNR/dt weighted, stratified or antithetic t",
                          decoders=("density", "discretised"), default_for=("continuous",),
                          resolve=L.resolve_continuous),
        udm.EstimatorSpec("ode", L.ode, _linear_gaussian, LINEAR_GAUSSIAN,
                          "probability-flow ODE likelihood (exact trace or Hutchinson; rk45 or fixed steps)",
                          decoders=("density",), bound=False, resolve=L.resolve_ode),
        udm.EstimatorSpec("elbo_masked", elbo_masked, accepts_mask,
                          "an absorbing token corruption (mask)",
                          "MDLM ELBO (continuous time) or the bound of the time type's chain; exact-count too",
                          decoders=("tokens",), default_for=("discrete", "continuous"), resolve=resolve_masked),
        udm.EstimatorSpec("elbo_deletion", elbo_deletion, accepts_deletion,
                          "the delete corruption with independent deletion (exact_count=False)",
                          "the deletion chain's ELBO: binomially thinned counts and inserted tokens per step",
                          decoders=("tokens",), default_for=("discrete", "continuous"), resolve=resolve_deletion),
    ]


@udm.hookimpl
def udm_register_estimators(register):
    for spec in specs():
        register(spec)
