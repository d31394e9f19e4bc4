"""udm: unified diffusion models.

Describe a forward corruption x_t = F_t(x_0, eps) and a time type; udm derives the loss and a family
of reverse samplers. Corruptions, time types, samplers, models, datasets and metrics are pluggy
plugins found through entry points in the group ``udm``.

``import udm`` is light: each public name is imported from its module on first use (PEP 562), so the
``udm`` command answers ``--help``, usage errors and Ctrl-C before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module (under ``udm``) that defines it; a module's own name means the module itself
_EXPORTS = {
    "hookimpl": "hookspecs",
    "Registry": "_registry", "PluginInfo": "_registry", "load_registry": "_registry", "registry": "_registry",
    "list_plugins": "_registry",
    "Corruption": "corruption", "GaussianNoise": "corruption", "capabilities": "corruption",
    "TimeType": "time", "check_grid": "time",
    "Family": "families", "Gaussian": "families", "Laplace": "families", "Categorical": "families",
    "get_family": "families",
    "Denoiser": "denoiser", "Prediction": "denoiser",
    "SamplerSpec": "samplers", "SamplerStep": "samplers", "Corrector": "samplers", "PerSampleGenerator": "samplers",
    "Sequences": "sequences",
    "samplers": "samplers", "nn": "nn", "bases": "bases", "grids": "grids", "accelerators": "accelerators",
    "accelerate": "accelerators", "Quantisation": "quantisation",
    "Schedule": "schedule", "AffineSchedule": "schedule",
    "LinearGaussian": "linear_gaussian", "Marginal": "linear_gaussian", "Parameterization": "parameterization",
    "PluginSpec": "plugin_spec", "build_plugin": "plugin_spec", "VarianceTable": "variance",
    "ClosedFormVariance": "variance", "fit_variance": "variance_fit", "VarianceFit": "variance_fit",
    "discrete_nelbo": "variance_nelbo", "ChainNelbo": "variance_nelbo", "VarianceHeadNetwork": "variance_head",
    "HeadVariance": "variance_head",
    "sample": "api", "supported_samplers": "api", "resolve_sampler": "api", "tune_grid": "grid_tuning",
    "TunedGrid": "grid_tuning",
    "diffusion_loss": "losses", "LossOutput": "losses",
    "Trainer": "training", "TrainResult": "training", "TrainStep": "training", "train": "training",
    "Experiment": "experiment", "RunResult": "experiment", "TrainingError": "experiment",
    "run_experiment": "experiment",
    "append_dims": "_tensor",
    "UdmError": "errors", "ConfigError": "errors", "PluginError": "errors", "UnknownPluginError": "errors",
    "CapabilityError": "errors", "UdmWarning": "errors", "IllConditionedWarning": "errors",
    "NoiseLevelTime": "noise_level",
    "Interval": "_schema",
    "Encoder": "encoder", "batch": "batch", "composition": "composition", "per_sample_loss": "losses",
    "likelihood": "likelihoods", "LikelihoodResult": "likelihoods", "EstimatorSpec": "likelihoods",
    "supported_estimators": "likelihoods",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    try:
        mod = importlib.import_module(f"{__name__}.{module or name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module or name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = mod if module in (None, name) else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from . import accelerators, bases, grids, nn, samplers
    from .accelerators import accelerate
    from .likelihoods import EstimatorSpec, LikelihoodResult, likelihood, supported_estimators
    from .linear_gaussian import LinearGaussian, Marginal
    from .parameterization import Parameterization
    from .plugin_spec import PluginSpec, build_plugin
    from .quantisation import Quantisation
    from .schedule import AffineSchedule, Schedule
    from .variance import ClosedFormVariance, VarianceTable
    from .variance_fit import VarianceFit, fit_variance
    from .variance_head import HeadVariance, VarianceHeadNetwork
    from .variance_nelbo import ChainNelbo, discrete_nelbo
    from ._registry import PluginInfo, Registry, list_plugins, load_registry, registry
    from ._schema import Interval
    from ._tensor import append_dims
    from .api import resolve_sampler, sample, supported_samplers
    from .corruption import Corruption, GaussianNoise, capabilities
    from .denoiser import Denoiser, Prediction
    from .encoder import Encoder
    from . import batch, composition
    from .errors import (CapabilityError, ConfigError, IllConditionedWarning, PluginError, UdmError, UdmWarning,
                         UnknownPluginError)
    from .experiment import Experiment, RunResult, TrainingError, run_experiment
    from .families import Categorical, Family, Gaussian, Laplace, get_family
    from .hookspecs import hookimpl
    from .losses import LossOutput, diffusion_loss, per_sample_loss
    from .samplers import Corrector, PerSampleGenerator, SamplerSpec, SamplerStep
    from .sequences import Sequences
    from .noise_level import NoiseLevelTime
    from .time import TimeType, check_grid
    from .training import Trainer, TrainResult, TrainStep, train
