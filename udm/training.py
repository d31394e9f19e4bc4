"""A compact, correct training loop: AdamW, EMA, gradient clipping, warm-up, explicit generators,
optional mixed precision (autocast of the network's forward; loss scaling for fp16) and torch.compile."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import _validate
from ._options import TrainOptions
from ._schema import schema_of
from .accelerators import Precision, accelerate, check_precision
from .losses import diffusion_loss

__all__ = ["Trainer", "TrainResult", "TrainStep", "train"]


@dataclass
class TrainStep:
    """What ``callback`` receives after each optimisation step."""

    step: int
    loss: float
    lr: float


@dataclass
class TrainResult:
    model: torch.nn.Module  #: the trained network
    ema: torch.nn.Module | None  #: its exponential moving average (use this to sample), or None
    losses: list[float] = field(default_factory=list)  #: loss per step
    steps: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> torch.nn.Module:
        """The EMA network when there is one, else the trained network."""
        return self.ema if self.ema is not None else self.model


_OPTIONS = schema_of(TrainOptions)


class Trainer:
    """Holds everything a training run changes: network, EMA copy, optimiser, step and generators.

    Args (defaults and ranges: :class:`udm._options.TrainOptions`, the YAML ``train`` section):
        lr, weight_decay, betas: AdamW settings.
        ema: EMA decay in [0, 1) (0 disables the EMA copy).
        grad_clip: clip the global gradient norm to this (> 0; ``None``: no clipping).
        warmup: linear learning-rate warm-up steps.
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast of the network's forward only (the corruption
            and the loss stay in the data's dtype; see :mod:`udm.accelerators`); fp16 scales the loss.
        compile: ``torch.compile`` the network the loss calls (the saved weights are the plain module's).
        seed: seeds the noise/time generator (on the data's device) and the batch-index generator (CPU).
    """

    def __init__(self, network: torch.nn.Module, corruption: Any, time_type: Any, *, lr: float = TrainOptions.lr,
                 weight_decay: float = TrainOptions.weight_decay, betas: tuple[float, float] = TrainOptions.betas,
                 ema: float = TrainOptions.ema, grad_clip: float | None = TrainOptions.grad_clip,
                 warmup: int = TrainOptions.warmup, precision: Precision = TrainOptions.precision,
                 compile: bool = TrainOptions.compile, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        _validate.check_keys("udm.Trainer", {"lr": lr, "weight_decay": weight_decay, "betas": betas, "ema": ema,
                                             "grad_clip": grad_clip, "warmup": warmup, "precision": precision,
                                             "compile": compile}, _OPTIONS, optional=("steps",), python=True)
        check_precision(precision, "train.precision")
        device = torch.device(device) if device is not None else next(network.parameters()).device
        self.network = network.to(device)
        self.corruption, self.time_type, self.device = corruption, time_type, device
        self.ema_decay, self.grad_clip = ema, grad_clip
        self.ema = copy.deepcopy(network).requires_grad_(False).eval() if ema > 0 else None
        # Fixed parameter lists, like the optimizer's: walking the module tree for .parameters() four times
        # a step cost ~0.6 ms/step on a small MLP (bench_training.py); load_state_dict copies in place.
        # Buffers are looked up every step (a module may reassign them), but only if it has any.
        self._params = list(network.parameters())
        self._ema_params = list(self.ema.parameters()) if self.ema is not None else []
        self._buffers = any(True for _ in network.buffers())
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.data_generator = torch.Generator().manual_seed(seed + 1)
        self.step = 0
        self.precision, self.compile = precision, compile
        #: fp16 only: scales the loss so that small gradients survive (a pass-through otherwise)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.loss_network = self.network
        #: the loss ``(network, corruption, time_type, x0, generator, *, shard) -> LossOutput`` (a second training
        #: stage, e.g. :func:`udm.variance_head.head_loss`, replaces it)
        self.loss_fn = diffusion_loss
        #: ``(rank, world)``: :meth:`train_step` computes the loss on this rank's slice of the global batch
        self.shard: tuple[int, int] = (0, 1)

    @property
    def loss_network(self) -> torch.nn.Module:
        """What the loss calls: ``network`` or a wrapper of it (DistributedDataParallel), under autocast
        and compiled as ``precision`` and ``compile`` ask (assign the unwrapped module; the trainer wraps it)."""
        return self._loss_network

    @loss_network.setter
    def loss_network(self, module: torch.nn.Module) -> None:
        self._loss_network = accelerate(module, precision=self.precision, compile=self.compile,
                                        where="train.precision")

    def batch_indices(self, n: int, batch_size: int) -> torch.Tensor:
        """``batch_size`` indices into ``n`` examples, uniform with replacement (explicit CPU generator)."""
        return torch.randint(n, (batch_size,), generator=self.data_generator)

    def next_batch(self, data: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The *global* batch of ``batch_size`` examples. Every rank of a multi-process run draws the same
        indices (equally seeded data generators); :meth:`train_step` keeps this rank's slice."""
        return data[self.batch_indices(len(data), batch_size)].to(self.device, non_blocking=True)

    def train_step(self, x0: torch.Tensor) -> float:
        """One AdamW step on the global batch ``x0`` (the loss on this rank's slice, see :attr:`shard`);
        returns this rank's loss (raises on a non-finite loss)."""
        if not self.network.training:  # once, not every step (train() walks every submodule)
            self.network.train()
        out = self.loss_fn(self.loss_network, self.corruption, self.time_type, x0, self.generator, shard=self.shard)
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"train: the loss must be finite; got {loss} at step {self.step + 1}. Lower train.lr, "
                f"enable train.grad_clip, or check the data for NaN/inf."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op without fp16)
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.scaler.step(self.optimizer)  # skips the step when fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`fit` changes, for a bit-for-bit resume: step, weights, EMA weights,
        optimizer and scheduler state, and both generators' states (``ByteTensor``)."""
        return {
            "step": self.step,
            "network": self.network.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "data_generator": self.data_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.step = int(state["step"])
        self.network.load_state_dict(state["network"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.data_generator.set_state(state["data_generator"])

    @torch.no_grad()
    def _update_ema(self) -> None:
        torch._foreach_lerp_(self._ema_params, self._params, 1 - self.ema_decay)  # no_grad: no graph
        if self._buffers:
            for b_ema, b in zip(self.ema.buffers(), self.network.buffers()):
                b_ema.copy_(b)

    def fit(self, data: torch.Tensor, *, steps: int, batch_size: int,
            callback: Callable[[TrainStep], Any] | None = None) -> TrainResult:
        """Train for ``steps`` more steps on the tensor ``data`` ``(n, ...)``."""
        _validate.check_keys("udm.Trainer.fit", {"steps": steps, "batch_size": batch_size}, _OPTIONS, python=True)
        start, losses = time.perf_counter(), []
        for _ in range(steps):
            losses.append(self.train_step(self.next_batch(data, batch_size)))
            if callback is not None:
                callback(TrainStep(self.step, losses[-1], self.scheduler.get_last_lr()[0]))
        self.network.eval()
        return TrainResult(self.network, self.ema, losses, self.step, time.perf_counter() - start)


def train(network: torch.nn.Module, corruption: Any, time_type: Any, data: torch.Tensor, *, steps: int,
          batch_size: int = 256, callback: Callable[[TrainStep], Any] | None = None, **options: Any) -> TrainResult:
    """Fit the corruption's statistics (if it has ``fit``), then train ``network`` on ``data``.

    ``options`` go to :class:`Trainer` (lr, weight_decay, ema, grad_clip, warmup, precision, compile, seed,
    device). Every argument is checked first (data kind, finiteness and shape against the network; option
    names, types and ranges), with the same messages as the YAML ``train`` section.
    """
    _validate.check_train_args(network, corruption, time_type, data, steps=steps, batch_size=batch_size,
                               options=options)
    if callable(getattr(corruption, "fit", None)):
        corruption.fit(data)
    trainer = Trainer(network, corruption, time_type, **options)
    return trainer.fit(data, steps=steps, batch_size=batch_size, callback=callback)
