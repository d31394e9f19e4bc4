"""Sample quality per model call: udm's solvers and grids against diffusers' schedulers, with an exact denoiser.

The model is the exact posterior mean E[x_0 | x_t] of a Gaussian mixture (``udm.testing.GaussianMixture``), so
every error is the sampler's. Both libraries sample the same noise table (diffusers' ``linear`` betas and
``squaredcos_cap_v2``, T = 1000; udm's ``table`` schedule rebuilds them bit for bit) from the same initial noise
z ~ N(0, I) (scaled by each sampler's initial noise level), at budgets of 5, 10 and 20 model calls.

Contenders (every run makes at most the budget's model calls; Heun makes 2N - 1 with N steps):

* diffusers: ``DPMSolverMultistepScheduler`` (2M, 3M, 2M SDE), ``UniPCMultistepScheduler``,
  ``DEISMultistepScheduler``, ``EulerDiscreteScheduler``, ``HeunDiscreteScheduler``, each with every grid option:
  ``timestep_spacing`` linspace / leading / trailing, ``use_karras_sigmas``, ``use_exponential_sigmas`` and (DPM)
  ``use_lu_lambdas``. The oracle is evaluated at the scheduler's exact sigma (not its rounded timestep), which
  favours diffusers: a real network would see the rounded timestep.
* udm: ``ddim``, ``dpm++2m``, ``dpm++3m``, ``unipc``, ``deis``, ``dpm++2m_sde``, ``ddpm`` on continuous and
  discrete time with the spacings uniform / quadratic / logsnr / karras; and the stochastic samplers with the
  exact optimal variance of q_theta (x0_hat drawn from N(mean, Sigma_t), Sigma_t = E_x_t Var[x_0 | x_t] averaged
  over dimensions, a ``udm.VarianceTable``; ``+var``): ddpm+var is Analytic-DPM, ddim+var Analytic-DDIM; and with
  each sample's own exact Var[x_0 | x_t] (``+pvar``, a variance source ``(t, x_t) -> Sigma``: what a perfect
  variance head, NPR/SN-DPM's, could give). Variance runs use continuous time.

Metrics (samples vs fresh mixture draws; every sample is assigned to its most likely component):

* ``sw``: sliced W2 (256 directions) after re-weighting modes: each sample carries weight w_k / (its mode's
  sample frequency), so mode-weight errors are taken out and the within-mode shape is compared;
* ``std``: within-mode std ratio, per mode the per-dimension std of its samples over the component's, averaged
  over dimensions and modes (weights w_k); 1 is right, deterministic solvers contract modes (< 1);
* ``tv``: total variation between the sample's mode frequencies and w.

Run::

    python benchmarks/bench_solvers.py                          # both mixtures and schedules, 5/10/20 calls
    python benchmarks/bench_solvers.py --n 2000 --budgets 10 --mixtures 2d --schedules linear

Results: benchmarks/results_solvers.md (``--out``).
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
import warnings
from dataclasses import dataclass

import torch

import udm
from udm.testing import GaussianMixture

F64 = torch.float64
T = 1000


# ------------------------------------------------------------------------------------------------ data
def mixtures() -> dict[str, GaussianMixture]:
    g = torch.Generator().manual_seed(12)
    k = 10
    wide = GaussianMixture(2.0 * torch.randn(k, 64, generator=g, dtype=F64),
                           0.1 + 0.4 * torch.rand(k, 64, generator=g, dtype=F64),
                           torch.distributions.Dirichlet(torch.full((k,), 2.0, dtype=F64)).sample())
    return {"2d": GaussianMixture.ring(k=8, radius=2.0, std=0.2), "64d": wide}


def assign(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """The most likely component of every sample."""
    v = mix.stds[None] ** 2
    logp = torch.log(mix.weights)[None] - 0.5 * ((x[:, None] - mix.means[None]) ** 2 / v + v.log()).sum(-1)
    return logp.argmax(1)


def weighted_sliced_w2(x: torch.Tensor, w: torch.Tensor, ref: torch.Tensor, projections: int = 256,
                       levels: int = 2000) -> float:
    """Sliced W2 between the weighted sample (x, w) and the equally weighted ``ref``, by quantile matching."""
    theta = torch.randn(x.shape[1], projections, generator=torch.Generator().manual_seed(0), dtype=F64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    u = (torch.arange(levels, dtype=F64) + 0.5) / levels
    px, order = (x @ theta).sort(dim=0)
    cw = torch.cumsum(w[order], dim=0) / w.sum()  # (n, P)
    qx = torch.gather(px, 0, torch.searchsorted(cw.T.contiguous(), u.expand(projections, -1).contiguous())
                      .clamp(max=x.shape[0] - 1).T)
    py = (ref @ theta).sort(dim=0).values
    qy = py[(u * ref.shape[0]).long().clamp(max=ref.shape[0] - 1)]
    return float(((qx - qy) ** 2).mean().sqrt())


@dataclass
class Score:
    sw: float
    std: float
    tv: float


def score(mix: GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> Score:
    x = x.to(F64)
    if not bool(torch.isfinite(x).all()):
        return Score(math.inf, math.nan, 1.0)
    k = assign(mix, x)
    freq = torch.bincount(k, minlength=len(mix.weights)).to(F64) / len(x)
    w = (mix.weights / freq.clamp_min(1e-12))[k]
    ratios, wts = [], []
    for j in range(len(mix.weights)):
        sel = x[k == j]
        if len(sel) > 2:
            ratios.append(float((sel.std(0) / mix.stds[j]).mean()))
            wts.append(float(mix.weights[j]))
    std = sum(r * q for r, q in zip(ratios, wts)) / sum(wts)
    return Score(weighted_sliced_w2(x, w, ref), std, 0.5 * float((freq - mix.weights).abs().sum()))


# ----------------------------------------------------------------------------------------------- diffusers
def diffusers_contenders():
    import diffusers

    spacing = [("linspace", {"timestep_spacing": "linspace"}), ("leading", {"timestep_spacing": "leading"}),
               ("trailing", {"timestep_spacing": "trailing"}), ("karras", {"use_karras_sigmas": True}),
               ("exponential", {"use_exponential_sigmas": True})]
    out = []
    for name, cls, kw in [("DPM++2M", diffusers.DPMSolverMultistepScheduler, {}),
                          ("DPM++3M", diffusers.DPMSolverMultistepScheduler, {"solver_order": 3}),
                          ("DPM++2M-SDE", diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
                          ("UniPC", diffusers.UniPCMultistepScheduler, {}),
                          ("DEIS", diffusers.DEISMultistepScheduler, {}),
                          ("Euler", diffusers.EulerDiscreteScheduler, {}),
                          ("Heun", diffusers.HeunDiscreteScheduler, {})]:
        grids = spacing + ([("lu", {"use_lu_lambdas": True})] if "DPM" in name else [])
        for gname, gkw in grids:
            out.append((f"{name} {gname}", cls, {**kw, **gkw}, name == "Heun"))
    return out


def run_diffusers(cls, kw, heun: bool, budget: int, beta_schedule: str, mix, z, seed: int):
    sched = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule=beta_schedule,
                prediction_type="sample", **kw)
    steps = (budget + 1) // 2 if heun else budget
    sched.set_timesteps(steps)
    x = z * float(sched.init_noise_sigma)
    gen = torch.Generator().manual_seed(seed)
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    calls = 0
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        idx = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
        sigma = float(sched.sigmas[idx])
        alpha = 1 / math.sqrt(1 + sigma * sigma)
        full = torch.ones(len(x), dtype=F64)
        x0 = mix.posterior_mean(inp.to(F64), alpha * full, sigma * alpha * full).to(x.dtype)
        calls += 1
        x = sched.step(x0, t, x, **({"generator": gen} if takes_gen else {})).prev_sample
    return x, calls


# -------------------------------------------------------------------------------------------------- udm
class OracleNet(torch.nn.Module):
    """The exact posterior mean as an x0-predicting network, so that ``udm.Denoiser`` can add q_theta's variance."""

    def __init__(self, mix, corr, time_type):
        super().__init__()
        self.den, self.scale = mix.denoiser(corr), float(time_type.encode(torch.ones(1, dtype=F64)))

    def forward(self, x, t_enc):
        return self.den(x, t_enc.to(F64) / self.scale)


UDM_SAMPLERS = ("ddim", "dpm++2m", "dpm++3m", "unipc", "deis", "dpm++2m_sde", "ddpm")
WITH_VARIANCE = ("ddim", "dpm++2m_sde", "ddpm")  # each with +var (Analytic-DPM's averaged Sigma_t) and +pvar
SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


def run_udm(reg, mix, corr, time_type, sampler, spacing, budget, z, seed, variance_cache):
    grid = time_type.grid(budget, spacing=spacing, corruption=corr)
    t0 = float(grid[0])
    x_init = z * float(corr.noise_schedule.amplitudes(torch.tensor([t0], dtype=F64))[1][0])
    name, _, var = sampler.partition(" + ")
    den = mix.denoiser(corr)
    if var == "pvar":  # the exact Var[x_0 | x_t] of each sample (what a perfect variance head would give)
        def source(t, x):
            return mix.posterior(x, corr, t.to(F64)).variance.to(x.dtype)
        den = udm.Denoiser(OracleNet(mix, corr, time_type), corr, time_type, variance=source)
    if var == "var":
        key = tuple(round(float(t), 12) for t in grid[:-1])
        if key not in variance_cache:
            amps = corr.noise_schedule.amplitudes(grid[:-1])
            g = torch.Generator().manual_seed(99)
            vals = [average_posterior_variance(mix, corr, float(t), float(a), float(s), 20000, g)
                    for t, a, s in zip(grid[:-1], *amps)]
            variance_cache[key] = udm.VarianceTable(grid[:-1], torch.tensor(vals, dtype=F64))
        den = udm.Denoiser(OracleNet(mix, corr, time_type), corr, time_type, variance=variance_cache[key])
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the order warm-up note at small budgets
        x = reg.get("sampler", name)(den, corr, grid, x_init, generator=torch.Generator().manual_seed(seed),
                                     callback=lambda s: calls.append(s.nfe))
    return x, calls[-1]


def average_posterior_variance(mix, corr, t: float, alpha: float, sigma: float, n: int, g) -> float:
    """E_{x_t}[Var[x_0 | x_t]] averaged over dimensions (Monte Carlo over x_0 ~ p, eps ~ N(0, I); n draws): the
    optimal isotropic variance of a Gaussian q_theta at this noise level (Bao et al. 2022, Analytic-DPM)."""
    x0 = mix.sample(n, g, dtype=F64)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    return float(mix.posterior(x_t, corr, torch.full((n,), t, dtype=F64)).variance.mean())


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="samples per run")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--mixtures", nargs="+", default=["2d", "64d"])
    ap.add_argument("--schedules", nargs="+", default=["linear", "squaredcos_cap_v2"])
    ap.add_argument("--out", default="benchmarks/results_solvers.md")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = udm.registry()
    mixes = mixtures()
    lines = ["# Sample quality per model call (exact denoiser)", "",
             f"`python benchmarks/bench_solvers.py --n {args.n}` ({time.strftime('%Y-%m-%d')}); sw: sliced W2 after "
             "re-weighting modes (lower is better), std: within-mode std ratio (1 is right), tv: mode-weight TV, "
             "nfe: model calls made.", ""]
    summary = ["## Best of each library per budget (by sw)", "",
               "| mixture | schedule | calls | udm best (config: sw / std / tv) | diffusers best (config: sw / std / tv) "
               "| udm std closer to 1 than every diffusers config? |", "|---|---|---|---|---|---|"]
    start = time.perf_counter()
    failures: list[str] = []
    for mname in args.mixtures:
        mix = mixes[mname]
        ref = mix.sample(args.n, torch.Generator().manual_seed(1), dtype=F64)
        z = torch.randn(args.n, mix.means.shape[1], generator=torch.Generator().manual_seed(2), dtype=F64)
        for sched_name in args.schedules:  # noqa: PLR1702
            corr = reg.create("corruption", "gaussian", prediction="x0",
                              schedule={"name": "table", "beta_schedule": sched_name})
            times = {"cont": reg.create("time", "continuous"), "disc": reg.create("time", "discrete", steps=T)}
            variance_cache: dict = {}
            lines += [f"## {mname} mixture, {sched_name}", "",
                      "| library | config | " + " | ".join(f"{b} calls: sw / std / tv (nfe)" for b in args.budgets) + " |",
                      "|---|---|" + "---|" * len(args.budgets)]
            rows: dict[tuple[str, str], dict[int, tuple[Score, int]]] = {}
            truth = score(mix, mix.sample(args.n, torch.Generator().manual_seed(4), dtype=F64), ref)
            lines.insert(len(lines) - 2, f"Noise floor (fresh mixture draws scored alike): sw {truth.sw:.3f}, std "
                                         f"{truth.std:.3f}, tv {truth.tv:.3f}.\n")
            for label, cls, kw, heun in diffusers_contenders():
                for b in args.budgets:
                    try:
                        x, nfe = run_diffusers(cls, kw, heun, b, sched_name, mix, z, 3)
                    except Exception as exc:  # a scheduler that fails on this table: reported, not scored
                        failures.append(f"- diffusers {label}, {mname}, {sched_name}, {b} calls: "
                                        f"{type(exc).__name__}: {exc}")
                        continue
                    rows.setdefault(("diffusers", label), {})[b] = (score(mix, x, ref), nfe)
            for sampler in (*UDM_SAMPLERS, *(s + v for s in WITH_VARIANCE for v in (" + var", " + pvar"))):
                for tname, tt in (times.items() if " + " not in sampler else [("cont", times["cont"])]):
                    for sp in SPACINGS:
                        for b in args.budgets:
                            x, nfe = run_udm(reg, mix, corr, tt, sampler, sp, b, z, 3, variance_cache)
                            rows.setdefault(("udm", f"{sampler} {tname} {sp}"), {})[b] = (score(mix, x, ref), nfe)
            for (lib, label), res in rows.items():
                cells = [f"{res[b][0].sw:.3f} / {res[b][0].std:.2f} / {res[b][0].tv:.3f} ({res[b][1]})" if b in res
                         else "failed" for b in args.budgets]
                lines.append(f"| {lib} | {label} | " + " | ".join(cells) + " |")
            lines.append("")
            for b in args.budgets:
                best = {}
                for lib in ("udm", "diffusers"):
                    cands = [(res[b][0].sw, label, res[b][0]) for (lb, label), res in rows.items()
                             if lb == lib and b in res]
                    best[lib] = min(cands, key=lambda c: c[0])
                dstd = [abs(res[b][0].std - 1) for (lb, _), res in rows.items() if lb == "diffusers" and b in res]
                u, d = best["udm"], best["diffusers"]
                summary.append(f"| {mname} | {sched_name} | {b} | {u[1]}: {u[2].sw:.3f} / {u[2].std:.2f} / "
                               f"{u[2].tv:.3f} | {d[1]}: {d[2].sw:.3f} / {d[2].std:.2f} / {d[2].tv:.3f} | "
                               f"{'yes' if abs(u[2].std - 1) < min(dstd) else 'no'} (|std-1|: udm "
                               f"{abs(u[2].std - 1):.3f}, best diffusers {min(dstd):.3f}) |")
            print(f"{mname} {sched_name} done ({time.perf_counter() - start:.0f} s)", flush=True)
            print("\n".join(summary[-len(args.budgets):]), flush=True)
            _write(args.out, lines, summary, failures)  # after every cell: a long run that is stopped keeps its results
    print(f"wrote {args.out}")


def _write(path: str, lines: list[str], summary: list[str], failures: list[str]) -> None:
    failed = ["## diffusers runs that failed", "", *(failures or ["none"]), ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines[:4] + summary + [""] + failed + lines[4:]) + "\n")


if __name__ == "__main__":
    main()
