"""SN-DPM and NPR-DPM heads against Analytic-DPM on trained models: two moons (an MLP) and 8x8 digits (a U-Net).

Stage 1 trains the mean network (eps-prediction, DDPM linear schedule, T = 1000); stage 2 trains an SN and an NPR
head on its frozen EMA copy for fewer than a quarter of stage 1's steps (udm.variance_head). Then the NELBO of the
DDPM-type chain on held-out data (nats/dim; lower is better) at K = 10 and 20 steps of Analytic-DPM's even
trajectory (n = 1 ... 1000), for q_theta's variance large (DDPM's beta), analytic and residual (tables fitted on the
grid with 2000 training examples per time), sn and npr; every row shares one decoder p(x0 | x_{1/T}) =
N(mean, the analytic Sigma_{1/T}), as in Bao et al., so the rows differ in the chain only.

    python benchmarks/bench_variance_heads.py --data moons               # ~3 minutes on one CPU core
    python benchmarks/bench_variance_heads.py --data digits --steps 3000 # ~20 minutes
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import udm
from udm.variance import ClosedFormVariance
from udm.variance_fit import data_variance
from udm.variance_head import HeadVariance, VarianceHeadNetwork, head_loss

from bench_variance_mixture import T, even_grid  # Analytic-DPM's even trajectory


def setup(reg, name: str, seed: int):
    if name == "moons":
        data = reg.create("dataset", "two_moons", n=20000, seed=seed)
        test = reg.create("dataset", "two_moons", n=4000, seed=seed + 1)
        net = reg.create("model", "mlp", data_shape=[2], width=128, depth=3)
        return data, test, net, 512
    digits = reg.create("dataset", "digits", seed=seed)
    net = reg.create("model", "unet", data_shape=[1, 8, 8], channels=16, channel_mult=[1, 2, 2], attention=False)
    return digits[:1500], digits[1500:], net, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["moons", "digits"], default="moons")
    ap.add_argument("--steps", type=int, default=4000, help="stage 1 training steps")
    ap.add_argument("--head-fraction", type=float, default=0.2, help="stage 2 steps as a fraction of stage 1's")
    ap.add_argument("--samples", type=int, default=2000, help="training examples per time of the table fits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", help="a .safetensors file for the stage-1 weights: written after training, read if it "
                                    "exists (to rerun stage 2 alone)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", udm.UdmWarning)
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time_type = reg.create("time", "discrete", steps=T)
    torch.manual_seed(args.seed)
    data, test, net, batch = setup(reg, args.data, args.seed)
    data, test = data.to(torch.float32), test.to(torch.float32)
    start = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():  # the stage-1 EMA weights of an earlier run with these options
        net.load_state_dict(load_file(cache))
        mean, t1 = net.eval(), float("nan")
    else:
        stage1 = udm.Trainer(net, corr, time_type, lr=2e-3, ema=0.999, warmup=100, seed=args.seed)
        stage1.fit(data, steps=args.steps, batch_size=batch)
        mean, t1 = stage1.ema, time.perf_counter() - start
        if cache is not None:
            save_file({k: v.contiguous() for k, v in mean.state_dict().items()}, cache)
    head_steps = int(args.head_fraction * args.steps)
    heads, t2 = {}, {}
    for kind in ("sn", "npr"):
        start = time.perf_counter()
        wrapped = VarianceHeadNetwork(copy.deepcopy(mean), kind, data_variance(data, corr))
        trainer = udm.Trainer(wrapped, corr, time_type, lr=2e-3, ema=0.99, warmup=50, seed=args.seed + 1)
        trainer.loss_fn = head_loss(kind)
        trainer.fit(data, steps=head_steps, batch_size=batch)
        heads[kind], t2[kind] = trainer.ema.eval(), time.perf_counter() - start
    d = data[0].numel()
    print(f"# {args.data}: stage 1 {args.steps} steps ({t1:.0f} s); stage 2 {head_steps} steps per head "
          f"({head_steps / args.steps:.0%} of stage 1; sn {t2['sn']:.0f} s, npr {t2['npr']:.0f} s); d = {d}; "
          f"NELBO on {len(test)} held-out examples, nats/dim\n")
    print("| K | large (beta) | analytic | residual | sn | npr |")
    print("|---|---|---|---|---|---|")
    for steps in (10, 20):
        grid = even_grid(steps)
        g = torch.Generator().manual_seed(args.seed + 2)
        fits = {src: udm.fit_variance(mean, corr, time_type, data, source=src, times=grid, samples=args.samples,
                                      generator=g) for src in ("analytic", "residual")}
        dec = float(fits["analytic"].table.lookup(torch.tensor([1 / T], dtype=torch.float64)).mean())
        rows = {"large": udm.Denoiser(mean, corr, time_type, variance=ClosedFormVariance(corr, "large")),
                "analytic": udm.Denoiser(mean, corr, time_type, variance=fits["analytic"].table),
                "residual": udm.Denoiser(mean, corr, time_type, variance=fits["residual"].table)}
        rows |= {k: udm.Denoiser(h, corr, time_type, variance=HeadVariance.of(h, corr)) for k, h in heads.items()}
        cells = []
        for name, den in rows.items():
            r = udm.discrete_nelbo(den, corr, grid, test, generator=torch.Generator().manual_seed(args.seed + 3),
                                   decoder_variance=dec, batch_size=500)
            cells.append(f"{r.nats_per_dim:.4f} +- {r.stderr:.4f}")
        print(f"| {steps} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
