"""The training objective derived from the corruption: maximise log q_theta(x_0 | F_t(x_0, eps))
over data, t and eps (docs/explanation.md, "Training"). The family fixes the per-sample loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .batch import batch_device, batch_size, take
from .families import get_family
from .time import network_time, train_times

__all__ = ["LossOutput", "diffusion_loss", "per_sample_loss"]


@dataclass
class LossOutput:
    loss: torch.Tensor  #: scalar, the batch mean (differentiable)
    per_sample: torch.Tensor  #: ``(batch,)`` detached per-sample losses
    t: Any  #: ``(batch,)`` the training times drawn (a mapping of them for a product's parts)


def _take(obj: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a batch (:func:`udm.batch.take`: tensors, ``udm.Sequences``, dataclasses of tensors, mappings)."""
    try:
        return take(obj, idx)
    except TypeError:
        raise TypeError(f"diffusion_loss: a sharded batch must be made of tensors, Sequences or dataclasses of tensors; "
                        f"got {type(obj).__name__}. Train on one process or give the noise such a type (or a mapping "
                        f"of them, one per part).") from None


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
    t = train_times(corruption, time_type, batch_size(x0), generator, batch_device(x0))
    eps = corruption.sample_noise(x0, generator)
    rank, world = shard
    if world > 1:
        idx = torch.arange(batch_size(x0)).tensor_split(world)[rank]
        x0, eps, t = _take(x0, idx), _take(eps, idx), _take(t, idx)
    x_t = corruption.forward(x0, eps, t)
    out = network(x_t, network_time(time_type, corruption, t))
    per = per_sample_loss(corruption, out, x0, eps, x_t, t)
    return LossOutput(per.mean(), per.detach(), t)


def per_sample_loss(corruption: Any, out: Any, x0: Any, eps: Any, x_t: Any, t: Any) -> torch.Tensor:
    """The per-sample loss ``(batch,)`` of the network output ``out`` at (x_0, eps, x_t, t): the corruption's own
    ``training_loss`` (weighted per basis coefficient) or ``nll`` (a structured q_theta) when it has one, else
    the family's loss of ``out`` against ``target`` (on ``loss_mask``), times ``loss_weight(t)``. Wrappers
    (chains, products, latent corruptions) call it on their parts."""
    own = getattr(corruption, "training_loss", None)
    if callable(own):  # the corruption weights its own loss (per basis coefficient, or a composed loss)
        return own(out, x0, eps, x_t, t)
    nll = getattr(corruption, "nll", None)
    if callable(nll):  # a structured q_theta (e.g. insertions) gives its exact -log q_theta(x_0 | x_t) itself
        per = nll(out, x0, eps, x_t, t)
    else:
        per = get_family(corruption.family).loss(out, corruption.target(x0, eps, t), corruption.loss_mask(x0, x_t))
    weight = corruption.loss_weight(t)
    if weight is not None:
        per = per * weight.to(per.dtype)
    return per
