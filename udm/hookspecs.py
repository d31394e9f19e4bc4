"""Every udm hook specification, in one module.

A plugin is a module (or object) with functions marked ``@udm.hookimpl`` whose names are the hooks
below. Each hook receives a ``register`` callable; call it once per object you contribute::

    import udm

    @udm.hookimpl
    def udm_register_corruptions(register):
        register(Blur)                 # name taken from ``Blur.name``

``register(obj, name=None)`` uses ``name`` if given, else ``obj.name``, else ``obj.__name__``.
Plugins are found through entry points in the group ``udm`` (see :mod:`udm._registry`).
"""

from __future__ import annotations

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT", "KINDS", "HOOK_OF_KIND"]

PROJECT = "udm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def udm_register_corruptions(register):
    """Register forward corruptions: subclasses of :class:`udm.Corruption` (or objects honouring it)."""


@hookspec
def udm_register_time_types(register):
    """Register time types: subclasses of :class:`udm.TimeType`."""


@hookspec
def udm_register_samplers(register):
    """Register samplers: :class:`udm.SamplerSpec` instances (a rule function plus fixed options)."""


@hookspec
def udm_register_schedules(register):
    """Register noise schedules: subclasses of :class:`udm.Schedule` (alpha_t, sigma_t of a Gaussian corruption)."""


@hookspec
def udm_register_models(register):
    """Register model factories: callables ``(**kwargs) -> torch.nn.Module``."""


@hookspec
def udm_register_datasets(register):
    """Register dataset factories: callables ``(**kwargs, seed) -> torch.Tensor`` of shape ``(n, ...)``."""


@hookspec
def udm_register_metrics(register):
    """Register metrics: callables ``(samples, reference, *, generator=None, **kwargs) -> float``."""


#: the plugin kinds, in the order they are shown
KINDS = ("corruption", "schedule", "time", "sampler", "model", "dataset", "metric")
HOOK_OF_KIND = {
    "corruption": "udm_register_corruptions",
    "schedule": "udm_register_schedules",
    "time": "udm_register_time_types",
    "sampler": "udm_register_samplers",
    "model": "udm_register_models",
    "dataset": "udm_register_datasets",
    "metric": "udm_register_metrics",
}
