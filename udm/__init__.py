"""udm: unified diffusion models.

Describe a forward corruption x_t = F_t(x_0, eps) and a time type; udm derives the loss and a family
of reverse samplers. Corruptions, time types, samplers, models, datasets and metrics are pluggy
plugins found through entry points in the group ``udm``.
"""

from . import bases, grids, nn, samplers
from ._registry import PluginInfo, Registry, list_plugins, load_registry, registry
from ._tensor import append_dims
from .api import resolve_sampler, sample, supported_samplers
from .corruption import Corruption, GaussianNoise, capabilities
from .denoiser import Denoiser, Prediction
from .linear_gaussian import LinearGaussian, Marginal
from .parameterization import Parameterization
from .plugin_spec import PluginSpec, build_plugin
from .variance import VarianceTable
from .errors import CapabilityError, ConfigError, PluginError, UdmError, UnknownPluginError
from .families import Categorical, Family, Gaussian, Laplace, get_family
from .hookspecs import hookimpl
from .losses import LossOutput, diffusion_loss
from .samplers import SamplerSpec, SamplerStep
from .schedule import AffineSchedule, Schedule
from .sequences import Sequences
from .time import TimeType, check_grid
from .training import Trainer, TrainResult, TrainStep, train
from .experiment import Experiment, RunResult, TrainingError, run_experiment

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "Registry",
    "PluginInfo",
    "load_registry",
    "registry",
    "list_plugins",
    "Corruption",
    "GaussianNoise",
    "capabilities",
    "TimeType",
    "check_grid",
    "Family",
    "Gaussian",
    "Laplace",
    "Categorical",
    "get_family",
    "Denoiser",
    "Prediction",
    "SamplerSpec",
    "SamplerStep",
    "Sequences",
    "Schedule",
    "AffineSchedule",
    "samplers",
    "bases",
    "grids",
    "LinearGaussian",
    "Marginal",
    "Parameterization",
    "PluginSpec",
    "build_plugin",
    "VarianceTable",
    "nn",
    "sample",
    "supported_samplers",
    "resolve_sampler",
    "diffusion_loss",
    "LossOutput",
    "Trainer",
    "TrainResult",
    "TrainStep",
    "train",
    "Experiment",
    "RunResult",
    "TrainingError",
    "run_experiment",
    "append_dims",
    "UdmError",
    "ConfigError",
    "PluginError",
    "UnknownPluginError",
    "CapabilityError",
]
