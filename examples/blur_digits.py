"""Blurring diffusion and Cold Diffusion on scikit-learn's 8x8 digits, on a CPU in a few minutes.

Trains the small U-Net for each configuration (``heat``: the plugin's defaults, small noise growing
to sigma = 0.1; ``blurring``: variance-preserving noise to pure noise; ``cold``: no noise, L1 loss),
then samples with ``residual`` (Cold Diffusion Algorithm 2), ``invert`` (DDIM per DCT frequency), ``dpm++2m``
(DPM-Solver++(2M) per DCT frequency: each frequency's own log-SNR), ``ddpm`` (the per-frequency DDPM posterior
the linear-Gaussian layer derives), ``renoise`` (Cold "naive") and ``refresh``, and reports the Fréchet distance
in pixel space
(``frechet_pixels``) against held-out digits, next to a floor (training digits vs held-out digits)
and a ceiling (prior samples x_1 vs held-out digits).
Writes a sample grid (first row: held-out digits; then one row per configuration and sampler).

    python examples/blur_digits.py --minutes 3 --out docs/img/blur_digits.png
    python examples/blur_digits.py --configs heat,blurring --samplers invert,dpm++2m --steps 10,20

Needs scikit-learn and matplotlib (``pip install udm[digits,plots]``).
"""

from __future__ import annotations

import argparse
import time

import torch

import udm
from udm import _plots

CONFIGS = {
    # name: corruption options (continuous time suits the smooth heat schedule)
    "heat": dict(blur="sin2", noise="linear", sigma=0.1, family="gaussian"),  # the plugin's defaults
    "blurring": dict(blur="sin2", noise="vp", sigma=1.0, family="gaussian"),  # Hoogeboom & Salimans 2023
    "cold": dict(blur="sin2", noise="linear", sigma=0.0, family="laplace"),  # Bansal et al. 2022
}
SAMPLERS = ("residual", "invert", "dpm++2m", "ddpm", "renoise", "refresh")


def train(reg, data, options, minutes, seed):
    corruption = reg.create("corruption", "blur", **options)
    time_type = reg.create("time", "continuous")
    net = reg.create("model", "unet", data_shape=[1, 8, 8], channels=16, channel_mult=[1, 2, 2], attention=False)
    corruption.fit(data)  # the channel-mean statistics the prior needs (udm.train does this too)
    trainer = udm.Trainer(net, corruption, time_type, lr=2e-3, ema=0.995, warmup=100, seed=seed)
    start = time.perf_counter()
    while time.perf_counter() - start < 60 * minutes:
        result = trainer.fit(data, steps=50, batch_size=128)
    print(f"  trained {result.steps} steps in {time.perf_counter() - start:.0f} s, last loss "
          f"{sum(result.losses[-50:]) / 50:.4f}", flush=True)
    return corruption, time_type, result.best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="training time per configuration")
    ap.add_argument("--steps", default="20", help="sampling steps, comma-separated (the grid uses the last)")
    ap.add_argument("--n", type=int, default=500, help="samples per sampler")
    ap.add_argument("--configs", default="heat,blurring,cold")
    ap.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated")
    ap.add_argument("--out", default="docs/img/blur_digits.png")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny convolutions: 1 is fastest)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = udm.registry()
    digits = reg.create("dataset", "digits", seed=args.seed)
    train_set, held_out = digits[:1500], digits[1500:]
    fd = reg.get("metric", "frechet_pixels")
    print(f"floor: FD(train digits, held-out) = {fd(train_set[: args.n], held_out):.3f}")
    rows = [held_out[:12]]
    for name in args.configs.split(","):
        print(f"[{name}] blur options {CONFIGS[name]}", flush=True)
        corruption, time_type, model = train(reg, train_set, CONFIGS[name], args.minutes, args.seed)
        prior = corruption.sample_prior((args.n, 1, 8, 8), torch.Generator().manual_seed(1))
        print(f"  ceiling: FD(prior x_1, held-out) = {fd(prior, held_out):.3f}")
        for sampler in args.samplers.split(","):
            options = {"amount": 0.5} if sampler == "refresh" else {}
            for steps in (int(s) for s in args.steps.split(",")):
                start = time.perf_counter()
                x = udm.sample(model, corruption, time_type, shape=(args.n, 1, 8, 8), sampler=sampler, steps=steps,
                               generator=torch.Generator().manual_seed(2), clamp=True, **options)
                print(f"  {sampler:9s} {steps:3d} steps: FD = {fd(x, held_out):.3f}  "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append(x[:12])
    caption = (f"rows: held-out digits, then for each of {', '.join(args.configs.split(','))}:\n"
               f"{', '.join(SAMPLERS)} ({args.steps.split(',')[-1]} steps)")
    _plots.save(_plots.image_grid_figure(torch.cat(rows), (-1, 1), caption, nrow=12), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
