"""Every linear-Gaussian likelihood estimator against the truth: Gaussian data N(mu, Sigma) in 3 dimensions with a
full covariance, its exact denoiser and exact posterior variance (udm.testing.GaussianData), the cosine schedule.

Prints, per dimension: the true NLL, the ODE with the exact trace (max |error| over examples) and with Hutchinson
(mean error and its standard error), elbo_continuous, and elbo_discrete for K = 1 .. 1000 with the small,
large, Analytic-DPM (udm.fit_variance on 4000 training draws) and exact variances (the same draws for all), each
as the mean of estimate - truth +- its standard error. Run: python benchmarks/likelihood_gaussian.py [--n 2000] (about 15 s on one thread).
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

import udm
from udm.testing import GaussianData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    reg = udm.registry()
    c = reg.create("corruption", "gaussian", schedule="cosine")
    time = reg.create("time", "discrete", steps=1000)
    data = GaussianData.random((3,), seed=0)
    x = data.sample(args.n, torch.Generator().manual_seed(1))
    nll = -data.log_prob(x)
    den = data.denoiser(c)

    def gap(r: udm.LikelihoodResult) -> str:
        d = (r.per_example - nll) / 3
        return f"{float(d.mean()):+.4f} +- {float(d.std() / math.sqrt(len(d))):.4f}"

    print(f"true NLL: {float(nll.mean()) / 3:.4f} nats/dim ({args.n} examples)")
    r = udm.likelihood(den, x[:200], "ode", corruption=c, time_type=time, t_min=1e-5, rtol=1e-8, atol=1e-8)
    print(f"ode, exact trace, 200 examples: max |error| {float((r.per_example - nll[:200]).abs().max()) / 3:.2e} "
          f"nats/dim")
    r = udm.likelihood(den, x, "ode", corruption=c, time_type=time, t_min=1e-5, trace="hutchinson", probes=1)
    print(f"ode, Hutchinson (1 Rademacher probe): error {gap(r)} nats/dim")
    r = udm.likelihood(den, x, "elbo_continuous", corruption=c, time_type=time, t_min=1e-4, draws=8, batch_size=2000)
    print(f"elbo_continuous (8 stratified log-uniform t): gap {gap(r)} nats/dim")
    train = data.sample(4000, torch.Generator().manual_seed(9))
    print("| K | small | large | analytic | exact |\n|---|---|---|---|---|")
    for k in (1, 2, 5, 10, 20, 100, 1000):
        cells = []
        with warnings.catch_warnings():  # Gamma_t ~ 1 near t = 1 (no signal): the fit uses its bound there
            warnings.simplefilter("ignore", udm.UdmWarning)
            fit = udm.fit_variance(lambda x_t, t, gen: den(x_t, t, gen).mean, c, time, train, source="analytic",
                                   steps=k, samples=4000, batch_size=4000)
        for v in ("small", "large", fit.table, data.variance(c)):
            r = udm.likelihood(den, x, "elbo_discrete", corruption=c, time_type=time, steps=k, variance=v,
                               batch_size=2000, seed=3)
            cells.append(f"{r.nats_per_dim:.4f} (gap {gap(r)})")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
