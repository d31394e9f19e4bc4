"""Training-step speed: ``udm.Trainer`` against a hand-written PyTorch loop doing the same work.

Both train the same network (the built-in ``mlp``, identical initial weights) on the same data with
the same recipe: Gaussian corruption with the cosine schedule and v-prediction, discrete time with
T = 1000, AdamW, linear warm-up (LambdaLR), global-norm gradient clipping at 1, and an EMA copy
updated after every step. The hand loop is what a practitioner writes in plain torch: index a batch,
draw n ~ U{1..T} and eps, x_t = alpha x0 + sigma eps, MSE against v = alpha eps - sigma x0,
backward, clip, step, EMA lerp. Before timing, the first steps of both are checked to give the same
losses (relative 1e-5), so the two really do the same arithmetic.

Timing: after a warm-up, the two contenders alternate in blocks of ``--block`` steps (order rotating
every round) and the median seconds per step over ``--rounds`` rounds is reported, with the ratio
udm / hand. Two clocks: wall time, and this thread's CPU time (``time.thread_time``), which on a CPU
run with ``--threads 1`` counts only the work of this process and so stays meaningful on a machine
that others share (wall time there includes waiting for a core). Target (issue 17): at most 1.05 at
batch 256 and 4096. Run::

    python benchmarks/bench_training.py [--batches 256 4096] [--rounds 15] [--block 20] [--threads 1]
    python benchmarks/bench_training.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

import udm

T, COSINE_S = 1000, 0.008
LR, EMA, WARMUP, CLIP = 2e-3, 0.99, 100, 1.0


def make_udm(net: torch.nn.Module, data: torch.Tensor, batch: int, device: torch.device) -> Callable[[], object]:
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="cosine", prediction="v")
    time_type = reg.create("time", "discrete", steps=T)
    trainer = udm.Trainer(net, corruption, time_type, lr=LR, ema=EMA, warmup=WARMUP, grad_clip=CLIP, seed=0,
                          device=device)
    return lambda: trainer.train_step(trainer.next_batch(data, batch))


def make_hand(net: torch.nn.Module, data: torch.Tensor, batch: int, device: torch.device) -> Callable[[], object]:
    """The plain-torch loop; draws in udm's order (t, then eps, from one generator; indices from another)."""
    net = net.to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / WARMUP))
    g = torch.Generator(device=device).manual_seed(0)
    g_data = torch.Generator().manual_seed(1)
    c0 = math.cos(COSINE_S / (1 + COSINE_S) * math.pi / 2) ** 2

    def step() -> torch.Tensor:
        x0 = data[torch.randint(len(data), (batch,), generator=g_data)].to(device, non_blocking=True)
        n = torch.randint(1, T + 1, (batch,), generator=g, device=device)
        t = n.double() / T
        abar = (torch.cos((t + COSINE_S) / (1 + COSINE_S) * (math.pi / 2)) ** 2 / c0).clamp_min(1e-20)
        alpha, sigma = abar.sqrt().float()[:, None], (1 - abar).sqrt().float()[:, None]
        eps = torch.randn(x0.shape, generator=g, device=device)
        out = net(alpha * x0 + sigma * eps, t * T)
        loss = (out - (alpha * eps - sigma * x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - EMA)
        return loss

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[], object], n: int, device: torch.device) -> tuple[float, float]:
    """(wall, this thread's CPU) seconds per step over ``n`` steps."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n, (time.thread_time() - c0) / n


def check_same_work(udm_step, hand_step, steps: int = 3) -> float:
    """The largest relative difference of the first ``steps`` losses (asserted below 1e-5)."""
    worst = 0.0
    for _ in range(steps):
        a, b = float(udm_step()), float(hand_step().detach())
        worst = max(worst, abs(a - b) / abs(b))
    if worst > 1e-5:
        raise AssertionError(f"udm and the hand loop must compute the same losses; got a relative difference {worst:.3g}")
    return worst


def bench(batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    reg = udm.registry()
    data = reg.create("dataset", "two_moons", n=65536, seed=0)
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=args.width, depth=args.depth)
    steps = {"udm": make_udm(copy.deepcopy(net), data, batch, device),
             "hand": make_hand(copy.deepcopy(net), data, batch, device)}
    diff = check_same_work(steps["udm"], steps["hand"])
    for fn in steps.values():  # warm-up: allocator, caches, lazy init
        seconds_per_step(fn, args.block, device)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    order = list(steps)
    for r in range(args.rounds):
        for name in order[r % 2:] + order[:r % 2]:
            times[name].append(seconds_per_step(steps[name], args.block, device))
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    return {"batch": batch, "udm_ms": 1e3 * wall["udm"], "hand_ms": 1e3 * wall["hand"], "ratio": wall["udm"] / wall["hand"],
            "udm_cpu_ms": 1e3 * cpu["udm"], "hand_cpu_ms": 1e3 * cpu["hand"], "cpu_ratio": cpu["udm"] / cpu["hand"],
            "loss_rel_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=20, help="steps per timed block")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# udm.Trainer vs hand-written loop: mlp width {args.width} depth {args.depth}, AdamW + EMA + clip + "
          f"warm-up; {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}; median of {args.rounds} rounds x {args.block} steps")
    print("| batch | udm ms/step | hand ms/step | udm / hand (wall) | udm CPU ms | hand CPU ms | udm / hand (CPU) "
          "| first-loss rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        r = bench(batch, args, device)
        print(f"| {r['batch']} | {r['udm_ms']:.3f} | {r['hand_ms']:.3f} | {r['ratio']:.3f} | {r['udm_cpu_ms']:.3f} "
              f"| {r['hand_cpu_ms']:.3f} | {r['cpu_ratio']:.3f} | {r['loss_rel_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
