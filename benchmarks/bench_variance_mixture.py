"""Analytic-DPM's headline on a Gaussian mixture where everything is exact (docs/howto-variance.md).

The data is a 16-dimensional mixture of 8 isotropic Gaussians (udm.testing.GaussianMixture.random); the mean
model is its exact posterior mean E[x0 | x_t] under the DDPM linear schedule (T = 1000). Two figures:

1. NELBO of the DDPM-type chain minus the data's entropy (nats/dim, >= 0; 0 = a perfect chain) at K = 10, 20,
   50 steps on Analytic-DPM's even trajectory (n = 1, ..., 1000, so the decoder step starts at t = 1/T; as in
   Bao et al. every row shares one decoder p(x0 | x_{1/T}), here N(mean, the exact E Var[x0 | x_{1/T}])), for
   q_theta's variance small (DDPM beta_tilde), large (beta), analytic (Monte Carlo, 4000 samples, on the grid's
   times) and exact (the oracle's E Var[x0 | x_t]); analytic on the optimal trajectory (the DP over a table
   fitted on all 1000 times); and the exact x_t-dependent Var[x0 | x_t] (what SN/NPR heads approximate).
2. Sample quality at 10 and 20 steps on the even trajectory: sliced W2 to fresh data after re-weighting each
   mode to its true weight (each sample is assigned to its most likely component), and the within-mode std
   ratio (pooled std of the samples assigned to a mode / that mode's std, averaged with the true weights;
   1 = right spread, < 1 = over-smoothed), for DDPM and DDIM with the mean (plain), with the analytic, the
   exact, and the exact x_t-dependent variance.

    python benchmarks/bench_variance_mixture.py            # ~1 minute on one CPU core
    python benchmarks/bench_variance_mixture.py --samples 8000 --n 8000
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import udm
from udm.testing import GaussianMixture
from udm.variance import ClosedFormVariance
from udm.variance_trajectory import optimal_grid

T = 1000


def even_grid(steps: int) -> torch.Tensor:
    """Analytic-DPM's 'linear' trajectory: n_k = round(1 + (T - 1) k / (K - 1)), k = 0..K-1, then 0."""
    n = [round(1 + (T - 1) * k / (steps - 1)) for k in range(steps)][::-1]
    return torch.tensor(n + [0], dtype=torch.float64) / T


def weighted_sliced_w2(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, projections: int, g) -> float:
    """Sliced W2 between the weighted sample (x, w) and the sample y, from quantiles at 2000 levels."""
    theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    q = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    total = 0.0
    for j in range(projections):
        px, order = (x @ theta[:, j]).sort()
        cw = w[order].cumsum(0) / w.sum()
        qx = px[torch.searchsorted(cw, q).clamp(max=len(px) - 1)]
        py = (y @ theta[:, j]).sort().values
        qy = py[(q * len(py)).long().clamp(max=len(py) - 1)]
        total += float(((qx - qy) ** 2).mean())
    return (total / projections) ** 0.5


def quality(mix: GaussianMixture, x: torch.Tensor, ref: torch.Tensor, g) -> tuple[float, float]:
    """(sliced W2 after re-weighting modes, within-mode std ratio)."""
    k = mix.component_log_prob(x).argmax(1)
    counts = torch.bincount(k, minlength=len(mix.weights)).to(torch.float64)
    w = (mix.weights / counts.clamp_min(1))[k]
    sw2 = weighted_sliced_w2(x.to(torch.float64), w, ref, 64, g)
    ratios, weights = [], []
    for j in range(len(mix.weights)):
        pts = x[k == j].to(torch.float64)
        if len(pts) > 10:
            ratios.append(float((pts - pts.mean(0)).pow(2).mean().sqrt() / mix.stds[j].reshape(-1)[0]))
            weights.append(float(mix.weights[j]))
    return sw2, sum(r * w for r, w in zip(ratios, weights)) / sum(weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=4000, help="Monte-Carlo samples per time of the analytic fit")
    ap.add_argument("--n", type=int, default=4000, help="test examples (NELBO) and samples (quality)")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", udm.UdmWarning)  # Gamma_t > 1 near t = 1: set to the bound (counted below)
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time_type = reg.create("time", "discrete", steps=T)
    mix = GaussianMixture.random(8, args.dim, std=0.1, seed=1)
    train = mix.sample(20000, torch.Generator().manual_seed(2), torch.float64)
    test = mix.sample(args.n, torch.Generator().manual_seed(3), torch.float64)
    entropy, entropy_se = mix.entropy(400000, torch.Generator().manual_seed(4))
    h = entropy / args.dim
    mean = mix.denoiser(corr)
    # one decoder p(x0 | x_{1/T}) for every row (small has none): N(mean, the exact E Var[x0 | x_{1/T}])
    dec = float(udm.fit_variance(None, corr, time_type, source="exact", oracle=mix, times=[1 / T],
                                 samples=args.samples).table.values[0])
    start = time.perf_counter()
    dense = udm.fit_variance(mean, corr, time_type, train, dense=T, samples=args.samples,
                             generator=torch.Generator().manual_seed(5))
    print(f"# mixture d = {args.dim}, 8 modes; entropy {h:.4f} +- {entropy_se / args.dim:.4f} nats/dim; dense "
          f"analytic table on {len(dense.times)} times fitted in {time.perf_counter() - start:.0f} s "
          f"(Gamma_t > 1 at {len(dense.flagged)} times)\n")
    print("| K | small (beta_tilde) | large (beta) | analytic | exact | analytic, optimal trajectory | exact Var[x0 | "
          "x_t] (x_t-dependent) | large / analytic |")
    print("|---|---|---|---|---|---|---|---|")
    fits = {}
    for steps in (10, 20, 50):
        grid = even_grid(steps)
        g = torch.Generator().manual_seed(6)
        fits[steps] = {
            "analytic": udm.fit_variance(mean, corr, time_type, train, times=grid, samples=args.samples, generator=g),
            "exact": udm.fit_variance(None, corr, time_type, source="exact", oracle=mix, times=grid,
                                      samples=args.samples, generator=g)}
        rows = {"small": (None, grid), "large": (ClosedFormVariance(corr, "large"), grid),
                "analytic": (fits[steps]["analytic"].table, grid), "exact": (fits[steps]["exact"].table, grid),
                "optimal": (dense.table, optimal_grid(steps, dense.table, corr, test[:1])),
                "posterior": ("posterior", grid)}
        gaps = {}
        for name, (var, times) in rows.items():
            r = udm.discrete_nelbo(mix.q_theta(corr, var), corr, times, test, decoder_variance=dec,
                                   generator=torch.Generator().manual_seed(7))
            gaps[name] = (r.nats_per_dim - h, r.stderr)
        cells = " | ".join(f"{gaps[k][0]:.3f} +- {gaps[k][1]:.3f}" for k in ("small", "large", "analytic", "exact",
                                                                             "optimal", "posterior"))
        print(f"| {steps} | {cells} | {gaps['large'][0] / gaps['analytic'][0]:.1f}x |", flush=True)
    print("\n| steps | grid | sampler | variance | sliced W2 (modes re-weighted) | within-mode std ratio |")
    print("|---|---|---|---|---|---|")
    ref = mix.sample(args.n, torch.Generator().manual_seed(8), torch.float64)
    for steps, trajectory in ((10, "even"), (20, "even"), (10, "optimal"), (20, "optimal")):
        grid = even_grid(steps) if trajectory == "even" else optimal_grid(steps, dense.table, corr, test[:1])
        if trajectory == "optimal":
            fits[steps] = {"analytic": dense, "exact": udm.fit_variance(None, corr, time_type, source="exact",
                                                                       oracle=mix, times=grid, samples=args.samples)}
        for sampler in ("ddpm", "ddim"):
            for name, var in (("none (plain)", None), ("analytic", fits[steps]["analytic"].table),
                              ("exact", fits[steps]["exact"].table), ("exact, x_t-dependent", "posterior")):
                x = udm.samplers.RULES["posterior" if sampler == "ddpm" else "invert"](
                    mix.q_theta(corr, var), corr, grid, corr.sample_prior((args.n, args.dim), torch.Generator()
                                                                          .manual_seed(9), dtype=torch.float64),
                    generator=torch.Generator().manual_seed(10))
                sw2, ratio = quality(mix, x, ref, torch.Generator().manual_seed(11))
                print(f"| {steps} | {trajectory} | {sampler} | {name} | {sw2:.4f} | {ratio:.3f} |", flush=True)
    print(f"\n(data itself: sliced W2 {quality(mix, test, ref, torch.Generator().manual_seed(11))[0]:.4f}, "
          f"std ratio {quality(mix, test, ref, torch.Generator().manual_seed(11))[1]:.3f})")


if __name__ == "__main__":
    main()
