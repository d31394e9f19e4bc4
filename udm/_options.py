"""The typed options of an experiment's ``train``, ``sample`` and ``run`` sections.

Each section is a frozen dataclass; :mod:`udm.config` checks a YAML section against the dataclass's
signature exactly as it checks a plugin section against the plugin's (:func:`udm._schema.schema_of`):
unknown keys, types, ``Literal`` choices and :class:`~udm._schema.Interval` ranges. The ``sample``
section also takes the chosen sampler's own keyword options (``eta``, ``solver``, ...).

A field marked ``fixed_on_resume`` may not change when a run is resumed; every other field may
(a learning rate lowered after a non-finite loss, a longer ``train.steps``, another sampler).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ._runlog import LogName
from ._schema import Interval
from .accelerators import Precision
from .errors import ConfigError
from .plugin_spec import PluginSpec

__all__ = ["TrainOptions", "SampleOptions", "RunOptions", "SEED_MAX", "STAGE_KEYS", "VarianceName", "fixed_on_resume",
           "sampler_own_keys", "check_draws_variance"]

#: the largest seed (numpy's seeds are 32-bit; the runner derives seed + 1 and seed + 1000 * rank)
SEED_MAX = 2**32 - 1
_FIXED = {"fixed_on_resume": True}

Seed = Annotated[int, Interval(ge=0, le=SEED_MAX)]
Unit = Annotated[float, Interval(ge=0, lt=1)]


@dataclass(frozen=True)
class TrainOptions:
    """``train``: the loop's length and batch, and :class:`udm.Trainer`'s keywords (its defaults).

    ``lr``, ``weight_decay`` and ``betas`` are AdamW's; ``ema`` is the EMA decay (0: no EMA copy);
    ``grad_clip`` clips the global gradient norm (``None``: no clipping); ``warmup`` is the number of
    linear learning-rate warm-up steps. ``stage: variance_head`` trains an SN/NPR ``head`` on the frozen mean
    network of the run directory ``init`` instead (:mod:`udm.variance_head`).
    """

    steps: Annotated[int, Interval(ge=0)]
    batch_size: Annotated[int, Interval(ge=1)] = 256
    lr: Annotated[float, Interval(gt=0)] = 1e-3
    weight_decay: Annotated[float, Interval(ge=0)] = 0.0
    betas: tuple[Unit, Unit] = (0.9, 0.999)
    ema: Unit = field(default=0.999, metadata=_FIXED)  # the EMA copy exists or not: it cannot appear later
    grad_clip: Annotated[float, Interval(gt=0)] | None = 1.0
    warmup: Annotated[int, Interval(ge=0)] = 0
    precision: Precision = "fp32"  # bf16 / fp16 autocast of the network's forward (udm.accelerators)
    compile: bool = False  # torch.compile the network the loss calls
    # a second stage (udm.variance_head): a variance head trained on the frozen mean network of the run ``init``
    stage: Literal["mean", "variance_head"] = field(default="mean", metadata=_FIXED)
    head: Literal["sn", "npr"] = field(default="sn", metadata=_FIXED)
    init: str | None = field(default=None, metadata=_FIXED)


#: the ``train`` keys of the second stage, which are not :class:`udm.Trainer` keywords
STAGE_KEYS = ("stage", "head", "init")
#: q_theta's variance by name (docs/math.md, "Optimal reverse variance"): fitted tables, closed forms, a head
VarianceName = Literal["analytic", "residual", "small", "large", "sn", "npr"]


@dataclass(frozen=True)
class SampleOptions:
    """``sample``: which registered sampler, on how many grid steps, how many samples, and how.

    ``nfe`` asks for a budget of model calls instead of ``steps`` (the most steps that fit; give one of the
    two); ``spacing`` is one of the time type's grid spacings; ``seed`` defaults to ``run.seed``;
    ``family_options`` go to the q_theta family (e.g. ``temperature`` for categorical); ``variance`` is
    q_theta's variance source (``analytic``/``residual``: a table ``udm fit-variance`` fitted into the run;
    ``small``/``large``: closed forms; ``sn``/``npr``: a ``variance_head`` run's head); ``corrector`` names a
    registered corrector run after every step (``{name: refresh, steps: 1, amount: 0.3}``); ``noise:
    per_sample`` gives every sample its own random stream (the same samples whatever ``n``); ``draws`` says where
    q_theta's ``variance`` is drawn from: ``steps`` (every step but the last, which returns the mean), ``last``
    (the mean on every step, a draw on the last) or ``all``.
    """

    sampler: str = "invert"
    steps: Annotated[int, Interval(ge=1)] = 50
    nfe: Annotated[int, Interval(ge=1)] | None = None  # a budget of model calls instead of steps
    n: Annotated[int, Interval(ge=1)] = 1024
    spacing: str = "uniform"
    clamp: bool = False
    seed: Seed | None = None
    family_options: dict[str, Any] | None = None
    precision: Precision = "fp32"  # bf16 / fp16 autocast of the network's forward while sampling
    compile: bool = False  # torch.compile the network for sampling
    variance: VarianceName | None = None  # q_theta's variance (None: the mean); udm fit-variance fits the tables
    corrector: PluginSpec["corrector"] | None = None  # a corrector after every predictor step (udm.Corrector)
    noise: Literal["shared", "per_sample"] = "shared"  # per_sample: one stream per sample (udm.PerSampleGenerator)
    draws: Literal["steps", "last", "all"] = "steps"  # where q_theta's variance is drawn (udm.samplers.DRAWS)


@dataclass(frozen=True)
class RunOptions:
    """``run``: where and how the run is kept.

    ``out`` is the run directory (default ``runs/<experiment name>``, versioned ``-2``, ``-3``, ... when
    taken); ``device`` is a torch device string or ``auto`` (CUDA, then MPS, then the CPU); checkpoints are written
    every ``checkpoint_every`` steps (0: only at the end), the newest ``keep`` are kept; the loss is
    logged every ``log_every`` steps.
    """

    out: str | None = None
    seed: Seed = field(default=0, metadata=_FIXED)
    device: str | None = "auto"
    checkpoint_every: Annotated[int, Interval(ge=0)] = 500
    keep: Annotated[int, Interval(ge=1)] = 3
    log_every: Annotated[int, Interval(ge=1)] = 10
    log: list[LogName] | tuple[LogName, ...] = ("jsonl",)  # + tensorboard (udm._runlog)
    plots: bool = True  # loss.png, sample pictures, denoising strips (matplotlib)


def sampler_own_keys() -> tuple[str, ...]:
    """The ``sample`` section's own keys; every other key of the section is an option of the sampler."""
    return tuple(f.name for f in dataclasses.fields(SampleOptions))


def fixed_on_resume(options: type) -> tuple[str, ...]:
    """The fields of an options dataclass that may not change on resume."""
    return tuple(f.name for f in dataclasses.fields(options) if f.metadata.get("fixed_on_resume"))


def check_draws_variance(cfg: dict[str, Any], src: str) -> None:
    """A ``sample`` section whose ``draws`` is not ``steps`` draws x_0 from q_theta: it needs ``variance``."""
    if cfg.get("draws", "steps") != "steps" and not cfg.get("variance"):
        raise ConfigError(f"{src}: sample.draws: {cfg['draws']!r} draws x_0 from q_theta, so it must come with a "
                          f"variance (sample.variance: analytic, residual, small, large, sn or npr); got variance "
                          f"{cfg.get('variance')!r}. Set sample.variance (udm sample RUN --variance NAME), or "
                          f"sample.draws: steps.")
