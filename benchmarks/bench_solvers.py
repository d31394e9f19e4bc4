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
  variance head, NPR/SN-DPM's, could give); ``+var last`` / ``+pvar last``: the deterministic solvers and the SDE
  solver with the sampler option ``draws="last"`` (the mean on every step, a draw of q_theta on the last, which
  puts back the spread the last step's mean removes). Variance runs use continuous time. And the deterministic solvers on
  a grid tuned to the model (``udm.tune_grid`` on a pilot of prior draws that the benchmark's noise is not:
  ``tuned``, the default objective ``mean`` on 512 draws; ``tuned-rms``, objective ``rms`` on 4096): its tuning
  calls are spent once per model and budget, not at sampling time.

Two stages: every configuration is screened at ``--n`` samples; then every diffusers run, udm's Pareto runs
(no other udm run lower on both sw and |std - 1|; the ``--confirm-k`` lowest in sw) and every tuned run run again on fresh noise and a
fresh reference at ``--confirm-n`` samples, and the verdict is taken there: is there a udm run with a lower sw
than every diffusers run *and* a std closer to 1 than every diffusers run? The confirmation also scores six fresh
mixture draws (the noise floor: what a perfect sampler scores, mean +- sd) and the ODE solved to 1e-6 (what a
deterministic sampler converges to), so that differences below the sampling noise are read as ties.

A third stage decides the budgets whose verdict the confirmation's noise leaves open: where some udm run is within
3 sqrt(2) floor sd of both of diffusers' bests (the noise of a difference of two runs) and none is that far ahead
of both. Those udm runs and every diffusers run within that margin of diffusers' best sw or best std run again at
``--decide-n`` samples (fresh noise, reference and floor: seeds 15, 16, 17-22), and the verdict is taken there.
A budget decided either way by more than the margin is not re-run.

Metrics (samples vs fresh mixture draws; every sample is assigned to its most likely component):

* ``sw``: sliced W2 (256 directions) after re-weighting modes: each sample carries weight w_k / (its mode's
  sample frequency), so mode-weight errors are taken out and the within-mode shape is compared;
* ``std``: within-mode std ratio, per mode the per-dimension std of its samples over the component's, averaged
  over dimensions and modes (weights w_k); 1 is right, deterministic solvers contract modes (< 1);
* ``tv``: total variation between the sample's mode frequencies and w.

Run::

    python benchmarks/bench_solvers.py                          # both mixtures and schedules, 5/10/20 calls
    python benchmarks/bench_solvers.py --n 2000 --budgets 10 --mixtures 2d --schedules linear --confirm-n 20000 0

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
    with torch.random.fork_rng():  # Dirichlet draws from the global generator, whose seed differs per process
        torch.manual_seed(12)
        weights = torch.distributions.Dirichlet(torch.full((k,), 2.0, dtype=F64)).sample()
    wide = GaussianMixture(2.0 * torch.randn(k, 64, generator=g, dtype=F64),
                           0.1 + 0.4 * torch.rand(k, 64, generator=g, dtype=F64), weights)
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
TUNED = ("ddim", "dpm++2m", "dpm++3m", "unipc", "deis")  # deterministic: udm.tune_grid on a pilot batch
WITH_VARIANCE = ("ddim", "dpm++2m_sde", "ddpm")  # each with +var (Analytic-DPM's averaged Sigma_t) and +pvar
LAST_DRAW = (*TUNED, "dpm++2m_sde")  # each with +var last / +pvar last: the mean on every step, a draw on the last
SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


#: tuned grids: spacing name -> (tune_grid objective, pilot size)
TUNINGS = {"tuned": ("mean", 512), "tuned-rms": ("rms", 4096)}


def tuned_grid(reg, mix, corr, time_type, sampler, budget, cache, spacing="tuned"):
    """udm.tune_grid's grid for ``sampler`` at ``budget`` calls (``TUNINGS[spacing]``: objective and pilot size), on
    a pilot of prior draws that are not the benchmark's (seed 7); cached."""
    objective, pilot = TUNINGS[spacing]
    key = (sampler, budget, spacing)
    if key not in cache:
        cache[key] = udm.tune_grid(mix.denoiser(corr), corr, time_type, steps=budget, sampler=sampler,
                                   shape=(pilot, mix.means.shape[1]), generator=torch.Generator().manual_seed(7),
                                   registry=reg, objective=objective)
    return cache[key]


def run_udm(reg, mix, corr, time_type, sampler, spacing, budget, z, seed, variance_cache):
    name, _, var = sampler.partition(" + ")
    var, _, last = var.partition(" ")  # "pvar last": the sampler option draws="last"
    if spacing in TUNINGS:
        grid = tuned_grid(reg, mix, corr, time_type, name, budget, variance_cache.setdefault("tuned", {}),
                          spacing).times
    else:
        grid = time_type.grid(budget, spacing=spacing, corruption=corr)
    t0 = float(grid[0])
    x_init = z * float(corr.noise_schedule.amplitudes(torch.tensor([t0], dtype=F64))[1][0])
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
                                     callback=lambda s: calls.append(s.nfe), draws=last or None)
    return x, calls[-1]


def average_posterior_variance(mix, corr, t: float, alpha: float, sigma: float, n: int, g) -> float:
    """E_{x_t}[Var[x_0 | x_t]] averaged over dimensions (Monte Carlo over x_0 ~ p, eps ~ N(0, I); n draws): the
    optimal isotropic variance of a Gaussian q_theta at this noise level (Bao et al. 2022, Analytic-DPM)."""
    x0 = mix.sample(n, g, dtype=F64)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    return float(mix.posterior(x_t, corr, torch.full((n,), t, dtype=F64)).variance.mean())


# ------------------------------------------------------------------------------------------------ main
def udm_contenders():
    """(sampler, time type, spacing) of every udm run."""
    lasts = tuple(s + v for s in LAST_DRAW for v in (" + var last", " + pvar last"))
    for sampler in (*UDM_SAMPLERS, *(s + v for s in WITH_VARIANCE for v in (" + var", " + pvar")), *lasts):
        for tname in (("cont", "disc") if " + " not in sampler else ("cont",)):
            for sp in SPACINGS:
                yield sampler, tname, sp
    for sampler in (*TUNED, *(s for s in lasts if s.partition(" + ")[0] in TUNED)):
        yield sampler, "cont", "tuned"
    for sampler in TUNED:  # the W2-type objective on a larger pilot: no crossing trajectory is averaged away
        yield sampler, "cont", "tuned-rms"


def pareto(rows: dict[str, Score], k: int) -> list[str]:
    """The configurations no other beats on both sw and |std - 1|, the ``k`` lowest in sw."""
    front = [a for a, sa in rows.items()
             if not any(sb.sw <= sa.sw and abs(sb.std - 1) <= abs(sa.std - 1) and (sb.sw, sb.std) != (sa.sw, sa.std)
                        for b, sb in rows.items() if b != a)]
    return sorted(front, key=lambda a: rows[a].sw)[:k]


def verdict(udm_rows: dict[str, Score], diff_rows: dict[str, Score]) -> tuple[str, str]:
    """(the udm run that beats every diffusers run on both metrics, or the closest; 'yes'/'no' with the margins)."""
    d_sw = min(diff_rows, key=lambda a: diff_rows[a].sw)
    d_std = min(diff_rows, key=lambda a: abs(diff_rows[a].std - 1))
    sw_cap, std_cap = diff_rows[d_sw].sw, abs(diff_rows[d_std].std - 1)
    both = [a for a, s in udm_rows.items() if s.sw < sw_cap and abs(s.std - 1) < std_cap]
    pick = min(both or udm_rows, key=lambda a: (udm_rows[a].sw if both else
                                                max(udm_rows[a].sw / sw_cap, abs(udm_rows[a].std - 1) / std_cap)))
    u = udm_rows[pick]
    return pick, (f"{'yes' if both else 'no'} (sw {u.sw:.5f} vs {sw_cap:.5f}; |std-1| {abs(u.std - 1):.4f} vs "
                  f"{std_cap:.4f})")


def contested(udm_rows: dict[str, Score], diff_rows: dict[str, Score], sd_sw: float, sd_std: float,
              margin: float = 3 * math.sqrt(2)) -> tuple[list[str], list[str]] | None:
    """The runs a larger sample must decide, or None where the verdict is clear: (udm runs within ``margin`` floor
    sd of both of diffusers' bests, diffusers runs within it of diffusers' best sw or best |std - 1|)."""
    d_sw = min(s.sw for s in diff_rows.values())
    d_dev = min(abs(s.std - 1) for s in diff_rows.values())
    tol_sw, tol_std = margin * sd_sw, margin * sd_std
    near = [a for a, s in udm_rows.items() if s.sw < d_sw + tol_sw and abs(s.std - 1) < d_dev + tol_std]
    if not near or any(udm_rows[a].sw < d_sw - tol_sw and abs(udm_rows[a].std - 1) < d_dev - tol_std for a in near):
        return None
    return near, [a for a, s in diff_rows.items() if s.sw < d_sw + tol_sw or abs(s.std - 1) < d_dev + tol_std]


def floor_scores(mix: GaussianMixture, ref: torch.Tensor, n: int, seeds: range) -> tuple[Score, dict[str, float]]:
    """What a perfect sampler scores: fresh mixture draws (one per seed) against ``ref``; (mean, sd of sw and std)."""
    floors = [score(mix, mix.sample(n, torch.Generator().manual_seed(s), dtype=F64), ref) for s in seeds]
    mean = Score(*(float(torch.tensor([getattr(f, k) for f in floors]).mean()) for k in ("sw", "std", "tv")))
    return mean, {k: float(torch.tensor([getattr(f, k) for f in floors]).std()) for k in ("sw", "std")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="samples per screening run")
    ap.add_argument("--confirm-n", type=int, nargs=2, default=[100_000, 20_000], metavar=("N_2D", "N_64D"),
                    help="samples per confirmation run (2-D, 64-D mixture); 0 skips the confirmation")
    ap.add_argument("--decide-n", type=int, nargs=2, default=[1_000_000, 200_000], metavar=("N_2D", "N_64D"),
                    help="samples per decision run, for the budgets the confirmation leaves open; 0 skips it")
    ap.add_argument("--confirm-k", type=int, default=8, help="udm's Pareto configurations re-run per budget")
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
             f"`python benchmarks/bench_solvers.py --n {args.n} --confirm-n {args.confirm_n[0]} {args.confirm_n[1]}` "
             f"({time.strftime('%Y-%m-%d')}); sw: sliced W2 after re-weighting modes (lower is better), std: "
             "within-mode std ratio (1 is right), tv: mode-weight TV, nfe: model calls made. Screening at n = "
             f"{args.n}; then every diffusers run and udm's Pareto runs (sw, |std - 1|) again on fresh noise at the "
             "confirmation size, where the verdict is taken.", ""]
    summary = ["## Verdict per budget (confirmation runs)", "",
               "| mixture | schedule | calls | verdict taken at | noise floor sw / std | udm (config: sw / std) | "
               "diffusers lowest sw | diffusers std closest to 1 | udm lower sw and std closer to 1? |",
               "|---|---|---|---|---|---|---|---|---|"]
    start = time.perf_counter()
    failures: list[str] = []
    for mname in args.mixtures:
        mix = mixes[mname]
        dim = mix.means.shape[1]
        confirm_n = args.confirm_n[0 if mname == "2d" else 1]
        for sched_name in args.schedules:
            corr = reg.create("corruption", "gaussian", prediction="x0",
                              schedule={"name": "table", "beta_schedule": sched_name})
            times = {"cont": reg.create("time", "continuous"), "disc": reg.create("time", "discrete", steps=T)}
            cache: dict = {}
            diff = {label: (cls, kw, heun) for label, cls, kw, heun in diffusers_contenders()}

            def run(lib, label, b, z, ref):
                if lib == "diffusers":
                    x, nfe = run_diffusers(*diff[label], b, sched_name, mix, z, 3)
                else:
                    sampler, tname, sp = label.rsplit(" ", 2)
                    x, nfe = run_udm(reg, mix, corr, times[tname], sampler, sp, b, z, 3, cache)
                return score(mix, x, ref), nfe

            ref = mix.sample(args.n, torch.Generator().manual_seed(1), dtype=F64)
            z = torch.randn(args.n, dim, generator=torch.Generator().manual_seed(2), dtype=F64)
            floor = score(mix, mix.sample(args.n, torch.Generator().manual_seed(4), dtype=F64), ref)
            lines += [f"## {mname} mixture, {sched_name}: screening (n = {args.n})", "",
                      f"Noise floor (fresh mixture draws scored alike): sw {floor.sw:.3f}, std {floor.std:.3f}, tv "
                      f"{floor.tv:.3f}.", "",
                      "| library | config | " + " | ".join(f"{b} calls: sw / std / tv (nfe)" for b in args.budgets) + " |",
                      "|---|---|" + "---|" * len(args.budgets)]
            rows: dict[tuple[str, str], dict[int, tuple[Score, int]]] = {}
            for lib, labels in (("diffusers", list(diff)), ("udm", [" ".join(c) for c in udm_contenders()])):
                for label in labels:
                    for b in args.budgets:
                        try:
                            rows.setdefault((lib, label), {})[b] = run(lib, label, b, z, ref)
                        except Exception as exc:  # a scheduler that fails on this table: reported, not scored
                            if lib == "udm":
                                raise
                            failures.append(f"- diffusers {label}, {mname}, {sched_name}, {b} calls: "
                                            f"{type(exc).__name__}: {exc}")
            for (lib, label), res in rows.items():
                cells = [f"{res[b][0].sw:.3f} / {res[b][0].std:.2f} / {res[b][0].tv:.3f} ({res[b][1]})" if b in res
                         else "failed" for b in args.budgets]
                lines.append(f"| {lib} | {label} | " + " | ".join(cells) + " |")
            tuned = cache.get("tuned", {})
            if tuned:
                lines += ["", "Tuned grids (`udm.tune_grid` on prior draws, seed 7; `tuned`: objective mean, pilot 512; "
                          "`tuned-rms`: objective rms, pilot 4096; e: the objective's distance to the reference ODE "
                          "solution on the pilot):", "",
                          "| sampler | calls | grid | start spacing | e of the fixed spacings | e tuned | tuning calls | "
                          "times |", "|---|---|---|---|---|---|---|---|"]
                for (sampler, b, sp), tg in sorted(tuned.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
                    fixed = ", ".join(f"{k} {v:.4f}" for k, v in tg.errors.items())
                    lines.append(f"| {sampler} | {b} | {sp} | {tg.start} | {fixed} | {tg.error:.4f} | {tg.calls} | "
                                 f"{', '.join(f'{float(t):.4g}' for t in tg.times[:-1])} |")
            lines.append("")
            if confirm_n:
                ref_c = mix.sample(confirm_n, torch.Generator().manual_seed(6), dtype=F64)
                z_c = torch.randn(confirm_n, dim, generator=torch.Generator().manual_seed(5), dtype=F64)
                floor_c, spread = floor_scores(mix, ref_c, confirm_n, range(8, 14))  # six fresh mixture draws
                lines += [f"### confirmation (n = {confirm_n}, fresh noise and reference)", "",
                          f"Noise floor (six fresh mixture draws): sw {floor_c.sw:.4f} +- {spread['sw']:.4f}, std "
                          f"{floor_c.std:.4f} +- {spread['std']:.4f} (mean +- sd).", "",
                          "| calls | library | config | sw | std | tv |", "|---|---|---|---|---|---|"]
                nfe: list[int] = []  # the ODE solved to 1e-6: what a deterministic sampler converges to
                exact = score(mix, udm.samplers.adaptive(
                    mix.denoiser(corr), corr, torch.tensor([1.0, times["cont"].t_min, 0.0], dtype=F64), z_c,
                    method="dopri5", rtol=1e-6, atol=1e-6, callback=lambda s: nfe.append(s.nfe)), ref_c)
                lines.append(f"| {nfe[-1]} | udm | adaptive dopri5 1e-6 (reference, not a contender) | {exact.sw:.4f} | "
                             f"{exact.std:.4f} | {exact.tv:.4f} |")
                decisions: list[str] = []
                for b in args.budgets:
                    conf: dict[str, dict[str, Score]] = {"udm": {}, "diffusers": {}}
                    screened = {lab: res[b][0] for (lib, lab), res in rows.items() if lib == "udm" and b in res}
                    for lib, labels in (("diffusers", [lab for (lb, lab), res in rows.items()
                                                       if lb == "diffusers" and b in res]),
                                        ("udm", list(dict.fromkeys([*pareto(screened, args.confirm_k),
                                                                    *(f"{t} cont {sp}" for sp in TUNINGS for t in TUNED)])))):
                        for label in labels:
                            sc, _ = run(lib, label, b, z_c, ref_c)
                            conf[lib][label] = sc
                            lines.append(f"| {b} | {lib} | {label} | {sc.sw:.4f} | {sc.std:.4f} | {sc.tv:.4f} |")
                    stage, floor_v, spread_v = f"n = {confirm_n}", floor_c, spread
                    open_runs = contested(conf["udm"], conf["diffusers"], spread["sw"], spread["std"])
                    decide_n = args.decide_n[0 if mname == "2d" else 1]
                    if open_runs and decide_n:
                        ref_d = mix.sample(decide_n, torch.Generator().manual_seed(16), dtype=F64)
                        z_d = torch.randn(decide_n, dim, generator=torch.Generator().manual_seed(15), dtype=F64)
                        floor_v, spread_v = floor_scores(mix, ref_d, decide_n, range(17, 23))
                        stage = f"decided at n = {decide_n}"
                        decisions += [f"#### decision, {b} calls (n = {decide_n}, fresh noise and reference; the runs "
                                  "the confirmation leaves open)", "",
                                  f"Noise floor (six fresh mixture draws): sw {floor_v.sw:.5f} +- {spread_v['sw']:.5f}, "
                                  f"std {floor_v.std:.4f} +- {spread_v['std']:.4f} (mean +- sd).", "",
                                  "| calls | library | config | sw | std | tv |", "|---|---|---|---|---|---|"]
                        conf = {"udm": {}, "diffusers": {}}
                        for lib, labels in (("diffusers", open_runs[1]), ("udm", open_runs[0])):
                            for label in labels:
                                sc, _ = run(lib, label, b, z_d, ref_d)
                                conf[lib][label] = sc
                                decisions.append(f"| {b} | {lib} | {label} | {sc.sw:.5f} | {sc.std:.4f} | {sc.tv:.4f} |")
                        decisions.append("")
                    pick, text = verdict(conf["udm"], conf["diffusers"])
                    d = conf["diffusers"]
                    d_sw = min(d, key=lambda a: d[a].sw)
                    d_std = min(d, key=lambda a: abs(d[a].std - 1))
                    u = conf["udm"][pick]
                    summary.append(f"| {mname} | {sched_name} | {b} | {stage} | {floor_v.sw:.4f} +- {spread_v['sw']:.4f} / "
                                   f"{floor_v.std:.4f} +- {spread_v['std']:.4f} | "
                                   f"{pick}: {u.sw:.5f} / {u.std:.4f} | {d_sw}: {d[d_sw].sw:.5f} / "
                                   f"{d[d_sw].std:.4f} | {d_std}: {d[d_std].sw:.5f} / {d[d_std].std:.4f} | {text} |")
                lines += ["", *decisions]
            print(f"{mname} {sched_name} done ({time.perf_counter() - start:.0f} s)", flush=True)
            print("\n".join(summary[4:]), flush=True)
            _write(args.out, lines, summary, failures)  # after every cell: a long run that is stopped keeps its results
    print(f"wrote {args.out}")


def _write(path: str, lines: list[str], summary: list[str], failures: list[str]) -> None:
    failed = ["## diffusers runs that failed", "", *(failures or ["none"]), ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines[:4] + summary + [""] + failed + lines[4:]) + "\n")


if __name__ == "__main__":
    main()
