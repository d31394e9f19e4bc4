"""Sampler speed: udm's ``invert`` / ``refresh`` against hand-written torch loops and diffusers.

Every contender calls the same network (the built-in ``mlp``, random weights, eps-prediction) on the
same prior batch over the same 50-step grid, so the model's own time is identical and the difference
is the sampler's overhead. Contenders:

    DDIM (deterministic)                       DDPM (ancestral, stochastic)
    hand   plain-torch DDIM loop               hand   plain-torch DDPM loop
    udm    udm.samplers.invert                 udm    udm.samplers.refresh(eta=1)  (the ``ddpm`` preset)
    diff   diffusers DDIMScheduler             diff   diffusers DDPMScheduler

    DPM-Solver++(2M) (multistep)
    hand   plain-torch DPM++(2M) loop
    udm    udm.samplers.multistep  (the ``dpm++2m`` preset)
    diff   diffusers DPMSolverMultistepScheduler

Grid. udm's ``discrete`` time with T = 1000 walks n in {1000, 980, ..., 20} and returns x0_hat at
the last step to n = 0; the model sees n. udm's index n is diffusers' index n - 1 (udm's alpha_bar_n
= prod_{i<=n}(1 - beta_i), diffusers' alphas_cumprod[k] = prod_{i<=k}(1 - betas[i]), 0-based), so the
same grid in diffusers is ``timestep_spacing="trailing"`` = {999, 979, ..., 19} with
``set_alpha_to_one=True``; its loop feeds the model ``timestep + 1`` so that every contender makes
exactly the same model calls. (diffusers' default ``"leading"`` spacing would be {980, 960, ..., 0},
one udm step lower.) Both stochastic hand loop and udm draw one ``randn`` per non-final step from the
same generator, and diffusers one per step (the last with a zero variance), so all three DDPM samplers
produce the same samples too; the benchmark checks and prints the max abs differences.

Timing. The network is wrapped in a timer that accumulates its own wall time (synchronising on CUDA);
"outside" = total - model time, reported per step. Contenders are interleaved within each repeat
(order rotated) and medians over repeats are reported. Run::

    python benchmarks/bench_samplers.py [--batches 256 65536] [--steps 50] [--repeats N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import udm
from udm import samplers

T = 1000  # training steps of the discrete time type and both diffusers schedulers
#: the clock every timing reads: wall time (default), or this thread's CPU time (``--clock cpu``), which other
#: processes on a shared machine do not inflate (single-threaded CPU runs only)
CLOCK = [time.perf_counter]
BETA_START, BETA_END = 1e-4, 0.02


# ------------------------------------------------------------------------------------------- timing
class TimedModel(torch.nn.Module):
    """Wraps a network and accumulates the wall time spent inside its forward (device-synchronised)."""

    def __init__(self, net: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net, self.cuda = net, device.type == "cuda"
        self.seconds, self.calls, self.inside = 0.0, 0, False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = CLOCK[0]()
        self.inside = True
        out = self.net(x, t)
        self.inside = False
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += CLOCK[0]() - t0
        self.calls += 1
        return out


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched outside the model (views included): a load-independent measure
    of a sampler's per-step work, next to the timings, which a busy shared machine can distort."""

    def __init__(self, model: TimedModel) -> None:
        super().__init__()
        self.model, self.ops = model, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not self.model.inside
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------- contenders
def alpha_bar_table() -> list[float]:
    """alpha_bar_n for n = 0..T as Python floats (udm indexing: alpha_bar_0 = 1), DDPM's linear betas."""
    betas = torch.linspace(BETA_START, BETA_END, T, dtype=torch.float64)
    return [1.0] + torch.cumprod(1 - betas, 0).tolist()


def hand_ddim(model, x, grid: list[int], abar: list[float], gen) -> torch.Tensor:
    """Plain-torch DDIM (eta = 0), Song et al. 2021 eq. 12, on the integer grid ``grid`` (n = T..0)."""
    batch = x.shape[0]
    for n, m in zip(grid[:-1], grid[1:]):
        eps = model(x, torch.full((batch,), float(n), device=x.device))
        a_t, a_s = abar[n], abar[m]
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = x0 if m == 0 else math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
    return x


def hand_ddpm(model, x, grid: list[int], abar: list[float], gen) -> torch.Tensor:
    """Plain-torch DDPM ancestral sampling on the sub-grid ``grid`` (Ho et al. 2020 eq. 6-7 with
    alpha_{t|s} = abar_t / abar_s): x_s = mean + std z, written as DDIM eq. 12 with eta = 1."""
    batch = x.shape[0]
    for n, m in zip(grid[:-1], grid[1:]):
        eps = model(x, torch.full((batch,), float(n), device=x.device))
        a_t, a_s = abar[n], abar[m]
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if m == 0:
            return x0
        std = math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        z = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - std * std) * eps + std * z
    return x


def hand_dpm2m(model, x, grid: list[int], abar: list[float], gen) -> torch.Tensor:
    """Plain-torch DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): x_s = (s_s/s_t) x + a_s (1 - e^{-h}) D with
    D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h, lambda = log(a/s); the last step returns x0."""
    batch, prev, lam_prev = x.shape[0], None, None
    for n, m in zip(grid[:-1], grid[1:]):
        eps = model(x, torch.full((batch,), float(n), device=x.device))
        a_t, s_t = math.sqrt(abar[n]), math.sqrt(1 - abar[n])
        x0 = (x - s_t * eps) / a_t
        if m == 0:
            return x0
        a_s, s_s = math.sqrt(abar[m]), math.sqrt(1 - abar[m])
        lam_t = math.log(a_t / s_t)
        h = math.log(a_s / s_s) - lam_t
        d = x0 if prev is None else (1 + h / (2 * (lam_t - lam_prev))) * x0 - h / (2 * (lam_t - lam_prev)) * prev
        x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
        prev, lam_prev = x0, lam_t
    return x


def udm_dpm2m(ctx):
    def run(model, x, grid, abar, gen):
        return samplers.multistep(ctx["denoiser"](model), ctx["corruption"], ctx["times"], x, generator=gen)
    return run


def udm_invert(ctx):
    def run(model, x, grid, abar, gen):
        return samplers.invert(ctx["denoiser"](model), ctx["corruption"], ctx["times"], x, generator=gen)
    return run


def udm_refresh(ctx):
    def run(model, x, grid, abar, gen):
        return samplers.refresh(ctx["denoiser"](model), ctx["corruption"], ctx["times"], x, generator=gen, eta=1.0)
    return run


def diffusers_loop(scheduler_cls, **step_kw):
    """A diffusers scheduler's set_timesteps/step loop (the way its pipelines call it) on udm's grid."""

    def make(steps: int):
        extra = {"DDIMScheduler": {"set_alpha_to_one": True, "clip_sample": False},
                 "DDPMScheduler": {"clip_sample": False}}.get(scheduler_cls.__name__, {})
        sched = scheduler_cls(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
                              prediction_type="epsilon", timestep_spacing="trailing", **extra)

        def run(model, x, grid, abar, gen):
            sched.set_timesteps(steps, device=x.device)
            batch = x.shape[0]
            for t in sched.timesteps:
                eps = model(x, (t + 1).float().expand(batch))  # udm index = diffusers index + 1
                x = sched.step(eps, t, x, generator=gen, **step_kw).prev_sample
            return x
        return run, sched
    return make


class TinyMLP(torch.nn.Module):
    """The issue's tiny network: 2 -> 64 -> 64 -> 2 (SiLU), with the time index appended as a third input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                       torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, (t.to(x.dtype) / T)[:, None]], 1))


@dataclass
class Result:
    total: list[float] = field(default_factory=list)  # seconds per sampler run
    outside: list[float] = field(default_factory=list)  # seconds per run outside the model
    ops: int = 0  # aten ops dispatched outside the model in one run


def bench_batch(batch: int, steps: int, repeats: int, device: torch.device, width: int, depth: int,
                warmup: bool = True, tiny: bool = False) -> tuple[dict, dict]:
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    tt = reg.create("time", "discrete", steps=T)
    torch.manual_seed(0)
    net = (TinyMLP() if tiny else reg.create("model", "mlp", data_shape=[2], width=width, depth=depth))
    net = net.to(device).eval()
    model = TimedModel(net, device)
    times = tt.grid(steps)
    grid = [int(round(v * T)) for v in times.tolist()]
    abar = alpha_bar_table()
    x1 = corruption.sample_prior((batch, 2), torch.Generator().manual_seed(1)).to(device)

    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    ddim_diff, s_ddim = diffusers_loop(DDIMScheduler, eta=0.0)(steps)
    ddpm_diff, s_ddpm = diffusers_loop(DDPMScheduler)(steps)
    dpm_diff, s_dpm = diffusers_loop(DPMSolverMultistepScheduler)(steps)
    ctx = {"denoiser": lambda m: udm.Denoiser(m, corruption, tt), "corruption": corruption, "times": times}
    contenders: dict[str, Callable] = {
        "DDIM hand": hand_ddim, "DDIM udm invert": udm_invert(ctx), "DDIM diffusers": ddim_diff,
        "DDPM hand": hand_ddpm, "DDPM udm refresh(eta=1)": udm_refresh(ctx), "DDPM diffusers": ddpm_diff,
        "DPM++2M hand": hand_dpm2m, "DPM++2M udm multistep": udm_dpm2m(ctx), "DPM++2M diffusers": dpm_diff,
    }
    # grids: each contender's model inputs, step by step
    s_ddim.set_timesteps(steps)
    assert [int(t) + 1 for t in s_ddim.timesteps] == grid[:-1], (s_ddim.timesteps, grid)
    s_ddpm.set_timesteps(steps)
    assert [int(t) + 1 for t in s_ddpm.timesteps] == grid[:-1], (s_ddpm.timesteps, grid)
    s_dpm.set_timesteps(steps)
    assert [int(t) + 1 for t in s_dpm.timesteps] == grid[:-1], (s_dpm.timesteps, grid)

    def gen():
        return torch.Generator(device=device).manual_seed(2)

    def once(fn):
        model.seconds, model.calls = 0.0, 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = CLOCK[0]()
        with torch.no_grad():
            out = fn(model, x1, grid, abar, gen())
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = CLOCK[0]() - t0
        assert model.calls == steps, (model.calls, steps)
        return out, total, model.seconds

    finals = {}
    if warmup:  # first calls pay one-off costs (allocator, lazy init); their outputs serve the check
        finals = {name: once(fn)[0] for name, fn in contenders.items()}
    results = {name: Result() for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate so no contender always goes first
        for name in order:
            out, total, inside = once(contenders[name])
            finals.setdefault(name, out)
            results[name].total.append(total)
            results[name].outside.append(total - inside)

    small = x1[:256]
    for name, fn in contenders.items():  # op counts do not depend on the batch size: count on 256 rows
        with torch.no_grad(), OpCounter(model) as counter:
            fn(model, small, grid, abar, gen())
        results[name].ops = counter.ops

    def rel(a: str, b: str) -> float:  # max |a - b| / max |b|: the samples are O(100) with random weights
        return ((finals[a] - finals[b]).abs().max() / finals[b].abs().max()).item()

    diffs = {
        "udm invert vs hand DDIM": rel("DDIM udm invert", "DDIM hand"),
        "diffusers DDIM vs hand DDIM": rel("DDIM diffusers", "DDIM hand"),
        "udm refresh vs hand DDPM": rel("DDPM udm refresh(eta=1)", "DDPM hand"),
        "diffusers DDPM vs hand DDPM": rel("DDPM diffusers", "DDPM hand"),
        "udm multistep vs hand DPM++2M": rel("DPM++2M udm multistep", "DPM++2M hand"),
        "diffusers DPM++2M vs hand DPM++2M": rel("DPM++2M diffusers", "DPM++2M hand"),
    }
    return results, diffs


# ------------------------------------------------------------------------------------------ report
def table(batch: int, steps: int, repeats: int, results: dict) -> str:
    med = {k: (statistics.median(v.total), statistics.median(v.outside)) for k, v in results.items()}
    lines = [f"### batch {batch} ({steps} steps, median of {repeats} interleaved repeats)", "",
             "| sampler | total ms | outside-model us/step | total / hand | outside / hand | aten ops/step outside |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, (tot, out) in med.items():
        hand = med[name.split(" ")[0] + " hand"]
        lines.append(f"| {name} | {tot * 1e3:.2f} | {out / steps * 1e6:.1f} | {tot / hand[0]:.3f} | {out / hand[1]:.2f} "
                     f"| {results[name].ops / steps:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 65536])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, nargs="+", default=None,
                   help="repeats per batch size (one value for all, or one per batch); default 21 for batch "
                        "<= 4096, else 1 (no separate warm-up run there)")
    p.add_argument("--model", choices=("mlp", "tiny"), default="mlp",
                   help="mlp: the built-in mlp (--width/--depth); tiny: a plain 2 -> 64 -> 64 -> 2 MLP")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this thread's CPU time (robust on a shared machine; use with --threads 1)")
    a = p.parse_args(argv)
    CLOCK[0] = time.thread_time if a.clock == "cpu" else time.perf_counter
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    reps = a.repeats or [21 if b <= 4096 else 1 for b in a.batches]
    if len(reps) == 1:
        reps = reps * len(a.batches)
    import diffusers

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} torch threads"
    print(f"udm sampler benchmark: torch {torch.__version__}, diffusers {diffusers.__version__}, device {a.device} ({dev}); "
          f"model {'tiny 2-64-64-2' if a.model == 'tiny' else f'mlp(width={a.width}, depth={a.depth})'}, data dim 2, eps-prediction, DDPM linear betas, T={T}, clock {a.clock}\n")
    for batch, n in zip(a.batches, reps):
        t0 = time.perf_counter()
        results, diffs = bench_batch(batch, a.steps, n, device, a.width, a.depth, warmup=batch <= 4096,
                                     tiny=a.model == "tiny")
        print(table(batch, a.steps, n, results))
        print("\nsame samples (max |difference| / max |sample|, float32): "
              + "; ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        print(f"(batch {batch} took {time.perf_counter() - t0:.0f} s)\n")


if __name__ == "__main__":
    main()
