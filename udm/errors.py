"""User-facing errors.

Every message follows one template (docs/safety.md lists the exit codes)::

    <where>: <what> must be <rule>; got <value>. <alternatives / how to fix>.

Each error class is a ``ValueError``/``LookupError`` subclass so that callers can catch broad kinds.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "UdmError",
    "ConfigError",
    "PluginError",
    "UnknownPluginError",
    "CapabilityError",
    "UdmWarning",
    "IllConditionedWarning",
    "did_you_mean",
]


class UdmError(Exception):
    """Base class of every error udm raises on purpose."""


class ConfigError(UdmError, ValueError):
    """A value given by the user (argument or config key) is not acceptable."""


class PluginError(UdmError, RuntimeError):
    """A plugin failed to load or to register, or two plugins conflict."""


class UnknownPluginError(UdmError, LookupError):
    """A name was asked for that no loaded plugin registered."""

    def __str__(self) -> str:  # LookupError would quote the message otherwise
        return str(self.args[0]) if self.args else ""


class CapabilityError(UdmError, ValueError):
    """A sampler (or feature) was asked of a corruption that lacks the capability it needs."""


class UdmWarning(UserWarning):
    """Base class of every warning udm issues on purpose (filter them with ``category=udm.UdmWarning``): something
    udm did on the user's behalf that they should know about (a damaged checkpoint skipped, a partial metrics
    line dropped, data at an extreme scale). The CLI prints it as ``udm CMD: warning: ...``."""


class IllConditionedWarning(UdmWarning):
    """A computation runs where it amplifies errors by orders of magnitude (e.g. an eps-predicting network
    converted to x0_hat where alpha is nearly 0); the message says by how much and how to avoid it."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
