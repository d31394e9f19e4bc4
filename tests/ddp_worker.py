"""Runs one experiment through ``udm.run_experiment`` and records what tests/test_distributed.py compares:
per step, the global batch indices this process drew, the batch size its network saw, and the gradients
after backward (averaged by DistributedDataParallel on several processes); at the end, the parameters.

    python tests/ddp_worker.py EXP.yaml OUT                      # one process
    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py EXP.yaml OUT
"""

from __future__ import annotations

import os
import sys

import torch

from udm.experiment import run_experiment
from udm.training import Trainer


def main(exp: str, out: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    record: dict[str, list] = {"indices": [], "seen": [], "grads": []}
    draw, step = Trainer.batch_indices, Trainer.train_step

    def batch_indices(self, n, batch_size):
        idx = draw(self, n, batch_size)
        record["indices"].append(idx.clone())
        return idx

    def train_step(self, x0):
        hook = self.network.register_forward_pre_hook(lambda m, args: record["seen"].append(len(args[0])))
        try:
            loss = step(self, x0)
        finally:
            hook.remove()
        record["grads"].append(torch.cat([p.grad.detach().reshape(-1).clone() for p in self.network.parameters()]))
        record["params"] = torch.cat([p.detach().reshape(-1).clone() for p in self.network.parameters()])
        return loss

    Trainer.batch_indices, Trainer.train_step = batch_indices, train_step
    run_experiment(exp, out=os.path.join(out, "run"), sample=False, progress=False)
    torch.save({"indices": torch.stack(record["indices"]), "seen": torch.tensor(record["seen"]),
                "grads": torch.stack(record["grads"]), "params": record["params"]},
               os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
