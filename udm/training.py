"""A compact, correct training loop: AdamW, EMA, gradient clipping, warm-up, explicit generators."""

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
        seed: seeds the noise/time generator (on the data's device) and the batch-index generator (CPU).
    """

    def __init__(self, network: torch.nn.Module, corruption: Any, time_type: Any, *, lr: float = TrainOptions.lr,
                 weight_decay: float = TrainOptions.weight_decay, betas: tuple[float, float] = TrainOptions.betas,
                 ema: float = TrainOptions.ema, grad_clip: float | None = TrainOptions.grad_clip,
                 warmup: int = TrainOptions.warmup, seed: int = 0, device: torch.device | str | None = None) -> None:
        _validate.check_keys("udm.Trainer", {"lr": lr, "weight_decay": weight_decay, "betas": betas, "ema": ema,
                                             "grad_clip": grad_clip, "warmup": warmup}, _OPTIONS, optional=("steps",),
                             python=True)
        device = torch.device(device) if device is not None else next(network.parameters()).device
        self.network = network.to(device)
        self.corruption, self.time_type, self.device = corruption, time_type, device
        self.ema_decay, self.grad_clip = ema, grad_clip
        self.ema = copy.deepcopy(network).requires_grad_(False).eval() if ema > 0 else None
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup > 0 else 1.0)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.data_generator = torch.Generator().manual_seed(seed + 1)
        self.step = 0
        #: what the loss calls: ``network`` itself, or a wrapper of it (DistributedDataParallel)
        self.loss_network: torch.nn.Module = self.network
        #: ``(rank, world)``: :meth:`next_batch` keeps this rank's slice of the global batch
        self.shard: tuple[int, int] = (0, 1)

    def next_batch(self, data: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Draw ``batch_size`` examples uniformly with replacement (explicit CPU generator)."""
        idx = torch.randint(len(data), (batch_size,), generator=self.data_generator)
        rank, world = self.shard
        if world > 1:  # every rank draws the same global indices and keeps its own contiguous slice
            idx = idx.tensor_split(world)[rank]
        return data[idx].to(self.device, non_blocking=True)

    def train_step(self, x0: torch.Tensor) -> float:
        """One AdamW step on the batch ``x0``; returns the loss (raises on a non-finite loss)."""
        self.network.train()
        out = diffusion_loss(self.loss_network, self.corruption, self.time_type, x0, self.generator)
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"train: the loss must be finite; got {loss} at step {self.step + 1}. Lower train.lr, "
                f"enable train.grad_clip, or check the data for NaN/inf."
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
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
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.network.parameters()], 1 - self.ema_decay)
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

    ``options`` go to :class:`Trainer` (lr, weight_decay, ema, grad_clip, warmup, seed, device). Every
    argument is checked first (data kind, finiteness and shape against the network; option names,
    types and ranges), with the same messages as the YAML ``train`` section.
    """
    _validate.check_train_args(network, corruption, time_type, data, steps=steps, batch_size=batch_size,
                               options=options)
    if callable(getattr(corruption, "fit", None)):
        corruption.fit(data)
    trainer = Trainer(network, corruption, time_type, **options)
    return trainer.fit(data, steps=steps, batch_size=batch_size, callback=callback)
