"""Samplers at small budgets with exact denoisers: the figures of issue 18 (schedule ends, discrete steps).

Run: python benchmarks/exact_denoisers.py [--n 20000] [--threads 1]   (about 3 minutes on one CPU core)

1. Probability-flow Euler / Heun from t = 1 on ``cosine``, the exact posterior mean of a 64-D Gaussian mixture
   (4 components, weights 0.4/0.3/0.2/0.1, means 6 z / 8, unit stds): the TV between the weights of the modes
   the samples land in and the true weights, with d alpha/dt(1) = -1.5585 (udm) and with the old value 0.
2. diffusers' cosine table (``squaredcos_cap_v2``) at t = 1: alpha and the eps -> x0 error gain sigma/alpha.
3. One float32 ``ddpm`` step on that table (n = 1000 -> 750) against float64: udm's error and the error of
   the float32 formula sqrt(1 - a^2), a = sqrt(1 - SNR_t/SNR_s).
4. Exact-count masking of 8 tokens from a Markov chain (6 tokens, ``MarkovChain.random(6, 8, seed=0)``), the
   exact per-position posterior as the denoiser: model calls and TV to the chain's law for ``invert`` and the
   confidence orders (calibrated default, greedy drawn-token, ``maskgit``) at 4 ... 64 steps.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import udm
from udm import samplers as S
from udm.plugins.mask import MaskCorruption
from udm.plugins.schedules import CosineSchedule
from udm.testing import GaussianMixture, MarkovChain, MarkovOracle


class OldCosine(CosineSchedule):
    """cosine with d alpha/dt(1) = 0, as the clamp of the pre-v2 code made it."""

    def derivatives(self, t):
        da, ds = super().derivatives(t)
        return torch.where(t >= 1, torch.zeros_like(da), da), ds


def mixture() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = 6 * torch.randn(4, 64, generator=g, dtype=torch.float64) / 8
    return GaussianMixture(means, torch.ones(4), torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))


def weight_tv(mix: GaussianMixture, x: torch.Tensor) -> float:
    lp = -0.5 * ((x.double()[:, None] - mix.means[None]) ** 2).sum(-1)
    w = torch.bincount(lp.argmax(1), minlength=len(mix.weights)).double() / len(x)
    return 0.5 * float((w - mix.weights).abs().sum())


def ode_figures(n: int) -> None:
    reg, mix = udm.registry(), mixture()
    x1 = torch.randn(n, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    se = math.sqrt(sum(float(w * (1 - w)) for w in mix.weights) / n)
    print(f"\n1. ODE from t = 1 on cosine, 64-D mixture, n = {n} (weight standard error ~{se:.4f})")
    print("   solver  calls  weight TV (d alpha/dt(1) = -1.5585)  weight TV (old: 0)")
    for solver, calls in (("euler", 5), ("euler", 10), ("heun", 5), ("heun", 9), ("euler", 100)):
        steps = calls if solver == "euler" else (calls + 1) // 2
        grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        row = []
        for schedule in ("cosine", OldCosine()):
            c = reg.create("corruption", "gaussian", schedule=schedule, prediction="x0")
            seen: list = []
            x = S.ode(mix.denoiser(c), c, grid, x1, solver=solver, callback=seen.append)
            row.append(weight_tv(mix, x))
        print(f"   {solver:6s}  {seen[-1].nfe:5d}  {row[0]:.4f}                               {row[1]:.4f}")


def table_figures() -> None:
    reg = udm.registry()
    c = reg.create("corruption", "gaussian", schedule={"name": "table", "beta_schedule": "squaredcos_cap_v2"})
    sch = c.schedule(torch.tensor([1.0, 0.75], dtype=torch.float64))
    a_t, a_s = sch.alpha.tolist()
    s_t, s_s = sch.sigma.tolist()
    print(f"\n2. diffusers' cosine table at t = 1: alpha_bar = {a_t**2:.3g}, alpha = {a_t:.3g}, "
          f"eps error gain sigma/alpha = {s_t / a_t:.3g}")
    n = 4096
    den = lambda x, t, g=None: 0.5 * torch.tanh(x)  # noqa: E731
    steps: list = []
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    reg.get("sampler", "ddpm")(den, c, grid, c.sample_prior((n, 2), torch.Generator().manual_seed(0)),
                               generator=torch.Generator().manual_seed(1), callback=steps.append)
    eps1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)).double()
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(1)).double()
    x_t = (eps1 * s_t).float().double()
    x0 = 0.5 * torch.tanh(x_t.float()).double()
    eps_hat = (x_t - a_t * x0) / s_t
    rho = (a_t * s_s) ** 2 / (a_s * s_t) ** 2
    want = a_s * x0 + s_s * (math.sqrt(rho) * eps_hat + math.sqrt(1 - rho) * z)
    a32 = torch.tensor(1 - rho, dtype=torch.float32).sqrt()
    old = a_s * x0 + s_s * (float((1 - a32 * a32).clamp_min(0).sqrt()) * eps_hat + float(a32) * z)
    print(f"3. one float32 ddpm step n = 1000 -> 750 (SNR_t/SNR_s = {rho:.3g}), max |error| vs float64: "
          f"udm {float((steps[0].x.double() - want).abs().max()):.2e}, float32 formula "
          f"{float((old - want).abs().max()):.2e}")


def mask_figures(n: int) -> None:
    chain = MarkovChain.random(6, 8, seed=0)
    c = MaskCorruption(6, exact_count=True)
    time_type = udm.registry().create("time", "discrete", steps=64)
    mean, std = chain.tv_floor(n, seeds=5)
    print(f"\n4. exact-count masking, L = 8, V = 6, n = {n}: TV floor (true samples) {mean:.4f} +- {std:.4f}")
    rows = (("invert", "invert", {}), ("confidence (calibrated)", "confidence", {}),
            ("confidence by=drawn, T=0", "confidence", {"by": "drawn", "choice_temperature": 0.0}),
            ("maskgit", "maskgit", {}))
    all_steps = (4, 8, 16, 64)
    print("   sampler                    " + "  ".join(f"{s:2d} steps (calls)" for s in all_steps))
    for label, name, options in rows:
        cells = []
        for steps in all_steps:
            seen: list = []
            x = udm.sample(MarkovOracle(chain, c), c, time_type, shape=(n, 8), sampler=name, steps=steps,
                           generator=torch.Generator().manual_seed(steps), callback=seen.append, **options)
            cells.append(f"{chain.tv(x):.3f} ({seen[-1].nfe:2d})   ")
        print(f"   {label:26s} " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="samples per figure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ode_figures(args.n)
    table_figures()
    mask_figures(args.n)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
