"""Warn when a sampling run starts where the network's output converts badly to x0_hat.

For a linear-Gaussian corruption a network that predicts eps or the score gives x0_hat = k_x x_t + k_o out
with |k_o| = s/a (eps) or s^2/a (score) per basis coefficient (docs/math.md, "Parameterisations"): an error
d in the output becomes an error |k_o| d in x0_hat. Where the schedule reaches a = 0 the corruption refuses
these targets at construction; where a is small but not 0 (diffusers' ``squaredcos_cap_v2`` table ends at
alpha_bar = 2.4e-9, a = 4.9e-5, so |k_o| = 2e4) the run starts with x0_hat ~ 1e4 x the network's error, and
the samples are destroyed unless x0_hat is clamped to the data range (docs/explanation.md, "Where eps
prediction breaks down").
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from ..errors import IllConditionedWarning

__all__ = ["ALPHA_MIN", "warn_if_ill_conditioned"]

#: the smallest starting amplitude a at which eps / score outputs are used without clamping
ALPHA_MIN = 1e-4


def warn_if_ill_conditioned(denoiser: Any, corruption: Any, table: Any, start: float, clamped: bool) -> None:
    """Issue :class:`~udm.IllConditionedWarning` when a run starting at time ``start`` converts a network's eps
    or score output (``denoiser``: a :class:`~udm.Denoiser`) where some coefficient of the grid's first row of
    ``table`` (a :class:`~udm.Marginal`, float64) has a < ``ALPHA_MIN``, and x0_hat is not ``clamped``."""
    if table is None or clamped or getattr(denoiser, "network", None) is None:
        return
    param = getattr(getattr(denoiser, "corruption", None), "parameterization", None)
    if param is None or param.prediction not in ("eps", "score"):
        return
    a, s = table.a64[:1], table.s64[:1]
    if float(a.min()) >= ALPHA_MIN:
        return
    gain = float(abs(param.x0_coefficients(a, s)[1]).max())
    name = getattr(corruption, "name", type(corruption).__name__)
    warnings.warn(IllConditionedWarning(
        f"sampling with corruption {name!r}: the amplitude alpha where a network predicting "
        f"{param.prediction} starts must be >= {ALPHA_MIN:g} (x0_hat multiplies the network's error by "
        f"{'sigma/alpha' if param.prediction == 'eps' else 'sigma^2/alpha'}); got alpha = {float(a.min()):.3g} at "
        f"t = {start:g}, an error gain of {gain:.3g}. Clamp x0_hat (clamp=True with the corruption's "
        f"data_range), start the grid where alpha >= {ALPHA_MIN:g}, or train with prediction v or x0."),
        stacklevel=_caller_level())


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside udm (and its built-in plugins): the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "udm":
        frame, level = frame.f_back, level + 1
    return level
