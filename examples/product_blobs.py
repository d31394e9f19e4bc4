"""A product corruption on labelled 2-D blobs: one network learns the joint law of (point, label), and holding the
label at t = 0 turns it into a class-conditional generator (issue 14).

The point is corrupted by Gaussian noise (cosine schedule), the label by masking, each on its own clock
(``times: independent``); ``joint_mlp`` sees both parts and both times. Reported:

* joint sampling (ddim): the chi-square statistic of the 16-cell joint histogram (label x side of the class
  centre in x x side in y) against the exact law, with its 0.1% critical value (37.7, 15 degrees of freedom),
  and the label frequencies against the class weights;
* conditional sampling, label held at k: the energy distance of the points to true draws of class k, against
  the noise floor (the energy distance between two sets of true draws of the same size: mean +- std over 20).

Run: python examples/product_blobs.py [--steps 3000] (about 2 CPU minutes). Measured results: see
benchmarks/results_compose_cpu.md.
"""

from __future__ import annotations

import argparse
import time

import torch

import udm
from udm.plugins.labelled import blob_law

CHI2_15 = 37.70  # chi-square critical value, 15 degrees of freedom, alpha = 1e-3


def joint_cells(x: dict, centres: torch.Tensor) -> torch.Tensor:
    k = x["label"][:, 0].long()
    above = (x["point"].double() > centres[k]).long()
    return torch.bincount(k * 4 + above[:, 0] * 2 + above[:, 1], minlength=4 * len(centres)).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = udm.registry()
    weights, centres, std = blob_law(4, 2.0, 0.3)
    data = reg.create("dataset", "labelled_blobs", n=20000)
    product = reg.create("corruption", "product", times="independent",
                         parts={"point": {"name": "gaussian", "schedule": "cosine"},
                                "label": {"name": "mask", "vocab_size": 4}})
    time_type = reg.create("time", "continuous")
    torch.manual_seed(0)
    net = reg.create("model", "joint_mlp", data_shape={"point": [2], "label": [1]},
                     vocab_size={"point": None, "label": 4}, width=128, depth=3)
    start = time.perf_counter()
    run = udm.train(net, product, time_type, data, steps=args.steps, batch_size=256, lr=2e-3, ema=args.ema, warmup=100)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s; loss "
          f"{sum(run.losses[:100]) / 100:.3f} -> {sum(run.losses[-100:]) / 100:.3f}")
    n = args.samples
    shape = {"point": (n, 2), "label": (n, 1)}
    x = udm.sample(run.ema, product, time_type, shape=shape, sampler=args.sampler, steps=args.sample_steps,
                   generator=torch.Generator().manual_seed(1))
    expected = n * weights.repeat_interleave(4) / 4
    chi2 = float(((joint_cells(x, centres) - expected) ** 2 / expected).sum())
    freq = torch.bincount(x["label"][:, 0], minlength=4).double() / n
    print(f"joint: chi-square {chi2:.1f} (critical {CHI2_15} at 0.1%, 15 df); label frequencies "
          f"{[round(v, 3) for v in freq.tolist()]} vs weights {[round(v, 3) for v in weights.tolist()]}")
    energy = reg.get("metric", "energy_distance")
    g = torch.Generator().manual_seed(2)
    m = n // 4
    for k in range(4):
        held = product.condition(label=torch.tensor([[k]]))
        xk = udm.sample(run.ema, held, time_type, shape={"point": (m, 2), "label": (m, 1)}, sampler=args.sampler,
                        steps=args.sample_steps, generator=torch.Generator().manual_seed(10 + k))
        truth = lambda: centres[k].float() + std * torch.randn(m, 2, generator=g)  # noqa: E731
        floor = torch.tensor([energy(truth(), truth()) for _ in range(20)])
        others = [energy(xk["point"], centres[j].float() + std * torch.randn(m, 2, generator=g)) for j in range(4)
                  if j != k]
        print(f"label held at {k}: energy distance {energy(xk['point'], truth()):.4f} to class {k} (noise floor "
              f"{float(floor.mean()):.4f} +- {float(floor.std()):.4f}); to the other classes >= {min(others):.2f}")


if __name__ == "__main__":
    main()
