"""The training objective derived from the corruption: maximise log q_theta(x_0 | F_t(x_0, eps))
over data, t and eps (docs/explanation.md, "Training"). The family fixes the per-sample loss."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .families import get_family

__all__ = ["LossOutput", "diffusion_loss"]


@dataclass
class LossOutput:
    loss: torch.Tensor  #: scalar, the batch mean (differentiable)
    per_sample: torch.Tensor  #: ``(batch,)`` detached per-sample losses
    t: torch.Tensor  #: ``(batch,)`` the training times drawn


def _take(obj: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a batch: a tensor, or a dataclass of tensors (``udm.Sequences`` keeps its padded width,
    so that per-token noise still lines up; noise such as ``(u, r)``)."""
    if isinstance(obj, torch.Tensor):
        return obj[idx.to(obj.device)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _take(getattr(obj, f.name), idx) for f in dataclasses.fields(obj)
                                           if isinstance(getattr(obj, f.name), torch.Tensor)})
    raise TypeError(f"diffusion_loss: a sharded batch must be made of tensors, Sequences or dataclasses of tensors; "
                    f"got {type(obj).__name__}. Train on one process or give the noise such a type.")


def diffusion_loss(network: torch.nn.Module, corruption: Any, time_type: Any, x0: Any,
                   generator: torch.Generator | None, *, shard: tuple[int, int] = (0, 1)) -> LossOutput:
    """One Monte-Carlo estimate of the loss on the batch ``x0``.

    t ~ time_type, eps ~ q(eps), x_t = F_t(x0, eps); the network maps ``(x_t, encode(t))`` to the
    corruption's ``target`` and the family's loss is weighted by ``corruption.loss_weight(t)``
    (restricted to ``corruption.loss_mask`` for categorical families). A corruption with a
    ``training_loss(output, x0, eps, x_t, t) -> (batch,)`` method (linear-Gaussian corruptions, whose
    weights may differ per basis coefficient) or the ``nll(output, x0, eps, x_t, t) -> (batch,)``
    capability (a structured q_theta) supplies the per-sample loss instead.

    ``shard = (rank, world)``: ``x0`` is the *global* batch; t and eps are drawn for all of it (so every
    rank, drawing from an equally seeded generator, draws what a single process would), and the loss is
    computed on this rank's contiguous slice ``tensor_split(world)[rank]`` only. The mean of the ranks'
    losses (and of their gradients, which DistributedDataParallel averages) is then the single-process one.
    """
    t = time_type.sample_train(len(x0), generator, device=x0.device)
    eps = corruption.sample_noise(x0, generator)
    rank, world = shard
    if world > 1:
        idx = torch.arange(len(x0)).tensor_split(world)[rank]
        x0, eps, t = _take(x0, idx), _take(eps, idx), t[idx.to(t.device)]
    x_t = corruption.forward(x0, eps, t)
    out = network(x_t, time_type.encode(t))
    own = getattr(corruption, "training_loss", None)
    nll = getattr(corruption, "nll", None)
    if callable(own):  # the corruption weights its own loss (per basis coefficient)
        return LossOutput((per := own(out, x0, eps, x_t, t)).mean(), per.detach(), t)
    if callable(nll):  # a structured q_theta (e.g. insertions) gives its exact -log q_theta(x_0 | x_t) itself
        per = nll(out, x0, eps, x_t, t)
    else:
        per = get_family(corruption.family).loss(out, corruption.target(x0, eps, t), corruption.loss_mask(x0, x_t))
    weight = corruption.loss_weight(t)
    if weight is not None:
        per = per * weight.to(per.dtype)
    return LossOutput(per.mean(), per.detach(), t)
