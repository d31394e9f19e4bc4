"""Sample (or fine-tune) a model trained with diffusers: ``model: {name: diffusers, path: DIR}``.

``DIR`` is a folder written by diffusers' ``save_pretrained``: a ``UNet2DModel`` folder with the scheduler's
``scheduler_config.json`` beside it, or a pipeline folder with ``unet/`` and ``scheduler/``. Nothing is
downloaded; diffusers itself is needed only to build the network (``pip install udm[diffusers]``).

The network becomes a udm network through :class:`udm.nn.Adapter`: udm's discrete index n = t T is
diffusers' timestep index n - 1 (udm's alpha_bar_n is diffusers' ``alphas_cumprod[n - 1]``), and the
output is ``.sample``. The scheduler's noise levels and prediction type fix what the corruption must be —
a ``gaussian`` corruption on the ``table`` schedule read from the same config, with ``prediction`` eps, v or
x0 for diffusers' ``epsilon``, ``v_prediction`` or ``sample`` — and a ``discrete`` time type with
``num_train_timesteps`` steps. The model declares these (``udm_expects``) and ``udm check``/``udm run`` refuse a
config that disagrees. :func:`from_diffusers` builds all three in Python::

    model = from_diffusers("path/to/pipeline")
    x = udm.sample(model.network, model.corruption, model.time_type, shape=(16, 3, 32, 32), sampler="ddim",
                   steps=50, clamp=True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import udm
from udm.errors import ConfigError

__all__ = ["DiffusersUNet", "DiffusersModel", "from_diffusers", "PREDICTIONS"]

#: diffusers' prediction_type -> udm's prediction
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _folders(path: str) -> tuple[Path, Path]:
    """(the UNet folder, the scheduler_config.json) of a save_pretrained folder."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"model diffusers: path must be a folder written by save_pretrained; got {path!r}, which "
                          f"is not a folder. Point it at the pipeline (with unet/ and scheduler/) or the UNet folder.")
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    for config in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                   unet / "scheduler_config.json"):
        if config.is_file():
            break
    else:
        raise ConfigError(f"model diffusers: {str(root)!r} must hold the scheduler's scheduler_config.json (beside "
                          f"the UNet or in scheduler/); got none. Save it with scheduler.save_pretrained(path).")
    if not (unet / "config.json").is_file():
        raise ConfigError(f"model diffusers: {str(unet)!r} must hold a UNet2DModel's config.json; got none. Save "
                          f"the UNet with unet.save_pretrained(path).")
    return unet, config


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ConfigError("model diffusers: the diffusers package must be installed to build the network; got an "
                          "environment without it. pip install 'udm[diffusers]'.") from None
    return diffusers


class DiffusersUNet(udm.nn.Adapter):
    """A saved diffusers ``UNet2DModel`` as a udm network ``(x_t, n) -> unet(x_t, n - 1).sample``.

    Args:
        path: the save_pretrained folder (see the module docstring).
        data_shape: filled in by the runner; must be the UNet's (in_channels, sample_size, sample_size).
    """

    name = "diffusers"

    def __init__(self, path: str, data_shape: list[int] | None = None) -> None:
        unet_dir, config_path = _folders(path)
        unet = _diffusers().UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
        super().__init__(unet, time=lambda n: n - 1)  # udm's index n -> diffusers' n - 1 (floats pass through)
        config = json.loads(config_path.read_text())
        kind = config.get("prediction_type", "epsilon")
        if kind not in PREDICTIONS:
            raise ConfigError(f"model diffusers: prediction_type in {str(config_path)!r} must be one of "
                              f"{', '.join(PREDICTIONS)}; got {kind!r}. udm maps these to eps, v and x0.")
        size = unet.config.sample_size
        size = list(size) if isinstance(size, (list, tuple)) else [size, size]
        shape = [unet.config.in_channels, *size]
        if data_shape is not None and list(data_shape) != shape:
            raise ConfigError(f"model diffusers: the data's shape must be the UNet's (in_channels, height, width) = "
                              f"{tuple(shape)}; got {tuple(data_shape)}. Use data of that shape.")
        self.config_path, self.data_shape = str(config_path), shape
        steps = int(config.get("num_train_timesteps", 1000))
        #: what this network needs from the corruption and time type (checked before any training or sampling)
        self.udm_expects = {"prediction": PREDICTIONS[kind], "time_steps": steps}
        self.clip_sample = bool(config.get("clip_sample", False))


@dataclass
class DiffusersModel:
    """A diffusers model as udm's three pieces, mutually consistent."""

    network: DiffusersUNet
    corruption: Any
    time_type: Any


def from_diffusers(path: str, registry: Any = None) -> DiffusersModel:
    """The network, the ``gaussian`` corruption on the scheduler's own ``table`` and the ``discrete`` time type
    of a save_pretrained folder (x0_hat clamped to [-1, 1] by ``clamp=True`` when the scheduler clips samples)."""
    reg = registry or udm.registry()
    net = DiffusersUNet(path)
    corruption = reg.create("corruption", "gaussian", schedule={"name": "table", "config": net.config_path},
                            prediction=net.udm_expects["prediction"],
                            data_range=[-1.0, 1.0] if net.clip_sample else None)
    time_type = reg.create("time", "discrete", steps=net.udm_expects["time_steps"])
    return DiffusersModel(net.eval(), corruption, time_type)


@udm.hookimpl
def udm_register_models(register):
    register(DiffusersUNet, name="diffusers")
