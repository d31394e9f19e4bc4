"""Predictor-corrector sampling with exact denoisers (issue 11): the figures of its closing note.

Run: python benchmarks/sde_pc.py [--n 20000] [--seeds 3] [--threads 1]   (about 15 minutes on one CPU core)

1. Gaussian mixtures (8 components on a 2-D ring of radius 2, std 0.2; and 4 components in 64-D, weights
   0.4/0.3/0.2/0.1, unit stds), VP SDE (beta 0.1 .. 20, continuous time, t_min = 1e-3), the exact posterior mean
   as the denoiser, budgets of 20 and 50 model calls (``nfe``), for ddpm, ddim, heun, the reverse-SDE
   predictors and predictor-corrector pairs: the TV between the weights of the modes the samples land in and the
   true weights, and the spread (mean squared standardised distance to the nearest mode per dimension, about 1
   for true draws, whose figures are printed first).
2. Masked diffusion of 8 tokens from a Markov chain (``MarkovChain.random(6, 8, seed=0)``, independent masking,
   continuous time), the exact per-position posterior marginals as the denoiser (a non-autoregressive network):
   TV to the chain's law over all 6^8 sequences at 8 and 16 model calls for plain ``invert`` and ``invert`` with
   the remasking correctors (ReMDM's schedules, with and without a shared prediction).

Each figure is the mean (and standard deviation) over ``--seeds`` seeds; the model calls are those the runs made.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import udm
from udm.testing import GaussianMixture, MarkovChain, MarkovOracle


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weight_tv(mix: GaussianMixture, x: torch.Tensor) -> float:
    """TV between the weights of the modes the samples land in (nearest mean, scaled by the stds) and the truth."""
    return 0.5 * float((mode_weights(mix, x) - mix.weights).abs().sum())


def nearest(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return (((x.double()[:, None] - mix.means[None]) / mix.stds[None]) ** 2).sum(-1).argmin(1)


def mode_weights(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(nearest(mix, x), minlength=len(mix.weights)).double() / len(x)


def spread(mix: GaussianMixture, x: torch.Tensor) -> float:
    """Mean squared standardised distance to the nearest mode per dimension (about 1 for true draws)."""
    k = nearest(mix, x)
    return float((((x.double() - mix.means[k]) / mix.stds[k]) ** 2).mean())


def mixture_64d() -> GaussianMixture:
    """4 components in 64-D, weights 0.4/0.3/0.2/0.1, means 6 z / 8, unit stds (benchmarks/exact_denoisers.py)."""
    g = gen(0)
    means = 6 * torch.randn(4, 64, generator=g, dtype=torch.float64) / 8
    return GaussianMixture(means, torch.ones(4), torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))


def stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {sd:.4f}"


MIXTURE_RUNS = (
    # label, sampler, options, corrector
    ("ddpm", "ddpm", {}, None),
    ("ddim", "ddim", {}, None),
    ("heun (PF-ODE)", "heun", {}, None),
    ("euler_maruyama (sde eta 1)", "euler_maruyama", {}, None),
    ("sde eta 0.5", "sde", {"eta": 0.5}, None),
    ("reverse_diffusion", "reverse_diffusion", {}, None),
    ("edm (Heun, churn 0)", "edm", {}, None),
    ("edm_stochastic", "edm_stochastic", {}, None),
    ("PC reverse_diffusion + langevin 0.16", "reverse_diffusion", {}, {"name": "langevin", "snr": 0.16}),
    ("PC euler_maruyama + langevin 0.16", "euler_maruyama", {}, {"name": "langevin", "snr": 0.16}),
    ("PC ddpm + ald 0.16", "ddpm", {}, {"name": "ald", "snr": 0.16}),
    ("PC ddpm + refresh 0.3", "ddpm", {}, {"name": "refresh", "amount": 0.3}),
    ("PC ddim + refresh 0.3", "ddim", {}, {"name": "refresh", "amount": 0.3}),
    ("PC ddim + refresh 0.3, last 3", "ddim", {}, {"name": "refresh", "amount": 0.3, "last": 3}),
)


def mixture_figures(n: int, seeds: int, name: str, mix: GaussianMixture) -> None:
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="vp")
    time_type = reg.create("time", "continuous", t_min=1e-3)
    dim = mix.means.shape[1]
    truth = [mix.sample(n, gen(100 + seed), torch.float64) for seed in range(seeds)]
    floor_tv = [weight_tv(mix, a) for a in truth]
    floor_spread = [spread(mix, a) for a in truth]
    print(f"\n1. {name}, VP, exact posterior mean, n = {n}, {seeds} seeds")
    print(f"   true draws: mode-weight TV {stats(floor_tv)}, spread {stats(floor_spread)}")
    print(f"   {'sampler':40s} {'budget':>6s} {'calls':>5s} {'steps':>5s}  {'mode-weight TV':>17s}  {'spread':>17s}")
    for nfe in (20, 50):
        for label, sampler, options, corrector in MIXTURE_RUNS:
            tvs, spreads = [], []
            for seed in range(seeds):
                seen: list = []
                x = udm.sample(mix.denoiser(corr), corr, time_type, shape=(n, dim), sampler=sampler, nfe=nfe,
                               dtype=torch.float64, generator=gen(seed), registry=reg, corrector=corrector,
                               callback=seen.append, **options)
                tvs.append(weight_tv(mix, x))
                spreads.append(spread(mix, x))
            print(f"   {label:40s} {nfe:6d} {seen[-1].nfe:5d} {len(seen):5d}  {stats(tvs):>17s}  {stats(spreads):>17s}")


MASK_RUNS = (
    ("invert", None),
    ("+ refresh 0.5 (fresh call)", {"name": "refresh", "amount": 0.5}),
    ("+ remask rescale 0.5 (fresh call)", {"name": "remask", "schedule": "rescale", "eta": 0.5}),
    ("+ remask confidence 0.5 (fresh call)", {"name": "remask", "schedule": "confidence", "eta": 0.5}),
    ("+ remask rescale 1.0, 1 fresh call, last 1", {"name": "remask", "eta": 1.0, "last": 1}),
    ("+ remask rescale 0.1, shared", {"name": "remask", "schedule": "rescale", "eta": 0.1, "share": True}),
    ("+ remask cap 0.1, shared", {"name": "remask", "schedule": "cap", "eta": 0.1, "share": True}),
    ("+ remask confidence 0.3, shared", {"name": "remask", "schedule": "confidence", "eta": 0.3, "share": True}),
    ("+ remask confidence 0.5, shared", {"name": "remask", "schedule": "confidence", "eta": 0.5, "share": True}),
    ("+ remask confidence 1.0, shared", {"name": "remask", "schedule": "confidence", "eta": 1.0, "share": True}),
)


def masked_figures(n: int, seeds: int) -> None:
    reg = udm.registry()
    chain = MarkovChain.random(6, 8, seed=0)
    corr = reg.create("corruption", "mask", vocab_size=6)
    time_type = reg.create("time", "continuous")
    floor, floor_sd = chain.tv_floor(n, seeds=8)
    print(f"\n2. masked Markov chain (6 tokens, length 8, independent masking), n = {n}, {seeds} seeds")
    print(f"   floor (TV of {n} true draws): {floor:.4f} +- {floor_sd:.4f}")
    print(f"   {'invert':45s} {'budget':>6s} {'calls':>5s} {'steps':>5s}  {'TV to the law':>17s}")
    for nfe in (8, 16):
        for label, corrector in MASK_RUNS:
            tvs = []
            for seed in range(seeds):
                seen: list = []
                x = udm.sample(MarkovOracle(chain, corr), corr, time_type, shape=(n, 8), sampler="invert", nfe=nfe,
                               generator=gen(seed), registry=reg, corrector=corrector, callback=seen.append)
                tvs.append(chain.tv(x))
            print(f"   {label:45s} {nfe:6d} {seen[-1].nfe:5d} {len(seen):5d}  {stats(tvs):>17s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    mixture_figures(args.n, args.seeds, "2-D ring of 8 (radius 2, std 0.2)", GaussianMixture.ring(8, 2.0, 0.2))
    mixture_figures(args.n, args.seeds, "64-D mixture of 4 (weights 0.4/0.3/0.2/0.1, unit stds)", mixture_64d())
    masked_figures(args.n, args.seeds)
    print(f"\n({time.time() - start:.0f} s, torch {torch.__version__})")


if __name__ == "__main__":
    main()
