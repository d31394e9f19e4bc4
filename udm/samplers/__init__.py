"""Samplers: plain functions sharing one signature, written on :class:`Sampling` (see :mod:`udm.samplers._rules`)."""

from ._correct import (DRAWS, Corrector, check_draws, current_corrector, current_draws, resolve_corrector,
                       sampling_context, supported_correctors)
from ._loop import Point, SamplerStep, Sampling, StepContext, require, sample_loop
from ._noise import PerSampleGenerator, per_sample_draws, sample_seed
from ._requires import Requirements, calls_per_step, calls_per_step_of, chooses_own_steps, requirements_of, requires
from ._adaptive import TABLEAUX, adaptive
from ._multistep import METHODS, multistep
from ._rules import CALLS_PER_STEP, SOLVERS, invert, ode, posterior, refresh, renoise, residual
from ._rules import RULES as _FIRST_ORDER
from ._sde import edm, reverse_diffusion, scale_coefficients, sde
from ._spec import SamplerSpec

#: rule name -> function (each declares its requirements with ``@requires``)
RULES = {**_FIRST_ORDER, "multistep": multistep, "adaptive": adaptive}

__all__ = [
    "SamplerSpec",
    "SamplerStep",
    "Sampling",
    "Point",
    "StepContext",
    "sample_loop",
    "require",
    "requires",
    "Requirements",
    "requirements_of",
    "calls_per_step",
    "calls_per_step_of",
    "chooses_own_steps",
    "renoise",
    "invert",
    "refresh",
    "residual",
    "ode",
    "posterior",
    "multistep",
    "METHODS",
    "adaptive",
    "TABLEAUX",
    "sde",
    "edm",
    "reverse_diffusion",
    "scale_coefficients",
    "Corrector",
    "resolve_corrector",
    "supported_correctors",
    "current_corrector",
    "sampling_context",
    "DRAWS",
    "check_draws",
    "current_draws",
    "PerSampleGenerator",
    "per_sample_draws",
    "sample_seed",
    "RULES",
    "SOLVERS",
    "CALLS_PER_STEP",
]
