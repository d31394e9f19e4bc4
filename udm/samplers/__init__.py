"""Samplers: stateless functions sharing one signature (see :mod:`udm.samplers._rules`)."""

from ._loop import SamplerStep, StepContext, sample_loop
from ._rules import RULES, SOLVERS, invert, ode, posterior, refresh, renoise, residual, velocity
from ._spec import SamplerSpec

__all__ = [
    "SamplerSpec",
    "SamplerStep",
    "StepContext",
    "sample_loop",
    "renoise",
    "invert",
    "refresh",
    "residual",
    "ode",
    "posterior",
    "velocity",
    "RULES",
    "SOLVERS",
]
