"""Multi-process training with torch.distributed, started by ``torchrun`` (never a home-made launcher).

``torchrun --nproc_per_node=N -m udm run EXP.yaml`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`setup` then joins the process group (``gloo`` on CPU, ``nccl`` on CUDA), and the runner

* wraps the network in ``DistributedDataParallel`` (gradients averaged over ranks after backward);
* shards the work, not the randomness: every rank draws the *same* global batch of ``batch_size``
  indices and the same t and eps for all of it (equally seeded generators), and computes the loss on
  its own contiguous slice of ``batch_size / world`` examples. The averaged gradient is then the
  gradient of the single-process loss on the same global batch, so a run on N processes trains like
  one process with the same ``batch_size`` and seed, up to float summation order;
* seeds torch's, numpy's and python's *global* RNGs with ``seed + 1000 * rank`` (user code such as
  dropout draws differently per rank);
* lets rank 0 alone write the run directory; checkpoints hold every rank's RNG states.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .accelerators import resolve_device
from .errors import ConfigError

__all__ = ["Dist", "setup", "teardown", "all_mean", "gather", "broadcast"]

RANK_SEED_STRIDE = 1000


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str | None = "auto") -> tuple[Dist, torch.device]:
    """Join the process group if launched by torchrun; return the job layout and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)  # "auto" / None: cuda, else mps, else cpu
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def check_batch(batch_size: int, d: Dist) -> None:
    if batch_size % d.world:
        raise ConfigError(f"train.batch_size: the global batch must be divisible by the number of processes "
                          f"({d.world}); got {batch_size}. Use a multiple of {d.world}.")


def wrap(network: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """``network`` wrapped in DistributedDataParallel when the job has several processes."""
    if not d.active:
        return network
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


def all_mean(value: float, d: Dist, device: torch.device) -> float:
    """The mean of a float over ranks (the global batch's loss)."""
    if not d.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / d.world


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj`` (small picklable objects only: RNG states), in rank order."""
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (small picklable objects only: a path)."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
