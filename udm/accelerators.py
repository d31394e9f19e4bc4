"""Devices, mixed precision and ``torch.compile``: ``run.device``, ``train``/``sample`` ``precision`` and ``compile``.

::

    run:    {device: auto}                      # cuda if available, else mps, else cpu
    train:  {precision: bf16, compile: true}    # autocast the network's forward; compile it
    sample: {precision: bf16, compile: true}

Only the **network call** runs under ``torch.autocast``: :class:`Autocast` wraps the module, enters
autocast around its forward and hands back float32 outputs. The corruption (x_t = F_t(x_0, eps), its
float64 schedule coefficients), the loss and the sampler's update arithmetic run outside it, in the
data's dtype, exactly as in full precision. ``fp16`` training scales the loss (``torch.amp.GradScaler``)
so that small gradients do not underflow; ``bf16`` has float32's exponent range and needs no scaling.

``compile: true`` wraps the (autocast) network in ``torch.compile`` (default mode): the first steps pay
for compilation (seconds to minutes), later ones run the fused kernels. The trained weights are the
plain module's, so checkpoints do not depend on either option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from .errors import ConfigError

__all__ = ["Precision", "DTYPES", "Autocast", "accelerate", "resolve_device"]

Precision = Literal["fp32", "bf16", "fp16"]

#: precision name -> the autocast dtype (``None``: no autocast)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


#: ``device: auto`` takes the first available of these, in order
AUTO_DEVICES: tuple[tuple[str, Callable[[], bool]], ...] = (
    ("cuda", torch.cuda.is_available),
    ("mps", _mps_available),
    ("cpu", lambda: True),
)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) -> the first available of cuda, mps, cpu; anything else -> ``torch.device``."""
    if device is None or device == "auto":
        return torch.device(next(name for name, available in AUTO_DEVICES if available()))
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"run.device: the device must be 'auto' or a torch device such as 'cpu', 'cuda', "
                          f"'cuda:1', 'mps'; got {device!r} ({exc}).") from None


def _float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
        return out.float()
    return out


class Autocast(torch.nn.Module):
    """``module``'s forward under ``torch.autocast(dtype)``; bf16/fp16 tensor outputs come back as float32.

    Outputs that are not tensors (a structured output such as the ``insertion`` model's) are returned as
    they are; work they do later runs outside autocast, in full precision."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.module(x, *args, **kwargs)
        return _float32(out)


def check_precision(precision: Any, where: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None`` for fp32); a :class:`ConfigError` for other names."""
    if precision not in DTYPES:
        raise ConfigError(f"{where}: precision must be one of {', '.join(map(repr, DTYPES))}; got {precision!r}. "
                          f"bf16 needs no loss scaling; fp16 does (the trainer scales it).")
    return DTYPES[precision]


def accelerate(network: torch.nn.Module, *, precision: Precision = "fp32", compile: bool = False,
               where: str = "accelerate") -> torch.nn.Module:
    """``network`` wrapped for faster calls: :class:`Autocast` for bf16/fp16, then ``torch.compile``.

    The wrappers share ``network``'s parameters (training the wrapped module trains ``network``);
    with ``fp32`` and ``compile=False`` the network itself is returned."""
    dtype = check_precision(precision, where)
    out = Autocast(network, dtype) if dtype is not None else network
    return torch.compile(out) if compile else out
