"""What the run-safety work (issue 16) costs: training and sampling, before and after, side by side.

The same workloads run on two source trees — a base revision (default: where this branch left ``main``)
and the working tree — each in its own fresh process per repeat, the two interleaved (order alternating)
so that a busy machine slows both alike. Medians over repeats; the ratio is after / before.

Workloads (tiny models, CPU, one thread unless ``--threads``):

``trainer_step``  ``udm.Trainer.train_step`` on the built-in ``mlp`` (width 64, depth 2), batch 256, 200
                  steps: the hot loop, which the new checks do not enter (they run once, before it).
``udm_train``     ``udm.train(...)`` end to end for 200 steps on 20000 two-moons points: adds the
                  argument and data checks (one pass over the data).
``udm_sample``    ``udm.sample(..., sampler="ddim", steps=50)`` for 2048 samples: adds the argument checks.
``run``           ``udm.run_experiment`` of a 200-step experiment with a checkpoint every 50 steps, a
                  metrics line every 10, then 50 sampling steps of 1024 samples: adds the sanity check,
                  the lock, the checksums of every checkpoint file, atomic writes and the data fingerprint.

Each repeat measures both trees back to back (order alternating); the ratio reported is the median of
the per-repeat ratios, with their interquartile range: a shared, busy machine drifts, and pairs drift
together. Time is the worker's CPU time (``time.process_time``, one torch thread), so that waiting for
a CPU that other processes hold does not count; file writes and fsync count only by their CPU cost.

Run::

    python benchmarks/bench_safety.py [--base REV] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("trainer_step", "udm_train", "udm_sample", "run")
EXPERIMENT = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 1000}
model: {name: mlp, width: 64, depth: 2}
data: {name: two_moons, n: 20000}
train: {steps: 200, batch_size: 256, lr: 1e-3, ema: 0.99}
sample: {sampler: ddim, steps: 50, n: 1024}
run: {checkpoint_every: 50, keep: 3, log_every: 10}
"""


# ------------------------------------------------------------------------------------ one process
def _parts():
    import torch

    import udm

    reg = udm.registry()
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=64, depth=2)
    return reg, net, reg.create("corruption", "gaussian", schedule="cosine"), reg.create("time", "discrete")


def _timed(fn) -> float:
    """CPU seconds of this process (one thread): what the work costs, not how long other processes held the CPU."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def worker(workload: str, scratch: Path) -> float:
    """CPU seconds of one workload (imports and plugin loading excluded)."""
    import torch

    import udm

    reg, net, corruption, time_type = _parts()
    data = reg.create("dataset", "two_moons", n=20000, seed=0)
    if workload == "trainer_step":
        trainer = udm.Trainer(net, corruption, time_type, lr=1e-3, ema=0.99)
        return _timed(lambda: [trainer.train_step(trainer.next_batch(data, 256)) for _ in range(200)])
    if workload == "udm_train":
        return _timed(lambda: udm.train(net, corruption, time_type, data, steps=200, batch_size=256, lr=1e-3, ema=0.99))
    if workload == "udm_sample":
        g = torch.Generator().manual_seed(0)
        return _timed(lambda: udm.sample(net, corruption, time_type, shape=(2048, 2), sampler="ddim", steps=50,
                                         generator=g, registry=reg))
    exp = scratch / "exp.yaml"
    exp.write_text(EXPERIMENT)
    return _timed(lambda: udm.run_experiment(str(exp), out=scratch / "run", progress=False))


# ------------------------------------------------------------------------------------------ driver
def _tree(rev: str | None, into: Path) -> Path:
    """The package as installed (``udm/`` with ``plugins/`` as ``udm/plugins``) of a revision or the working tree."""
    into.mkdir(parents=True)
    if rev is None:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "udm", "plugins"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        for f in files:
            (into / f).parent.mkdir(parents=True, exist_ok=True)
            (into / f).write_bytes((ROOT / f).read_bytes())
    else:
        archive = subprocess.run(["git", "archive", rev, "udm", "plugins"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "plugins").rename(into / "udm" / "plugins")
    return into


def _measure(tree: Path, workload: str, threads: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--worker", workload, "--scratch", scratch,
                              "--threads", str(threads)], cwd=scratch, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{workload} on {tree}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default=None, help="base revision (default: git merge-base HEAD main)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps({"seconds": worker(args.worker, Path(args.scratch))}))
        return
    base = args.base or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _tree(base, Path(tmp) / "before"), "after": _tree(None, Path(tmp) / "after")}
        print(f"before = {base[:10]}, after = working tree; {args.repeats} repeats, {args.threads} thread(s), "
              f"one fresh process per measurement, interleaved")
        print(f"{'workload':<14}{'before CPU s':>13}{'after CPU s':>13}{'after/before':>14}{'IQR of ratios':>22}")
        for workload in args.workloads:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.repeats):
                for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    times[name].append(_measure(trees[name], workload, args.threads))
            ratios = [a / b for a, b in zip(times["after"], times["before"])]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(f"{workload:<14}{statistics.median(times['before']):>13.3f}"
                  f"{statistics.median(times['after']):>13.3f}{statistics.median(ratios):>14.3f}"
                  f"{f'[{q1:.3f}, {q3:.3f}]':>22}", flush=True)


if __name__ == "__main__":
    main()
