"""Two-process torchrun (gloo, CPU) trains like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

EXP = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 32, depth: 1, time_dim: 16}
data: {name: two_moons, n: 2000}
train: {steps: 300, batch_size: 128, lr: 3e-3, ema: 0.9}
run: {checkpoint_every: 150, keep: 2, log_every: 1}
"""
WINDOW = 100


def _losses(run: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


@pytest.mark.slow  # two torchrun processes: 10-20 s on two cores (CI runs -m slow)
def test_two_process_torchrun_matches_one_process(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP)
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "udm", "train", str(exp), "--out", str(tmp_path / "two")]
    two = subprocess.run(env_cmd, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "udm", "train", str(exp), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    # rank 0 alone wrote the run directory; the checkpoint holds both ranks' (different) generator states
    rng = load_file(str(tmp_path / "two" / "checkpoints" / "step-00000300" / "rng.safetensors"))
    assert {k.split(".")[0] for k in rng} == {"rank0", "rank1"}
    assert not (rng["rank0.generator"] == rng["rank1.generator"]).all()
    assert (rng["rank0.data_generator"] == rng["rank1.data_generator"]).all()  # the same global batches
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 300
    # Same initial weights and global batch indices, but independent noise/time draws per rank: the per-step
    # losses are two noisy estimates of the same curve. Over windows of W steps the means differ by
    # N(0, (s_a^2 + s_b^2) / W) if the runs train alike; 4 standard errors (two-sided 6e-5 per window).
    for w in range(0, 300, WINDOW):
        x, y = a[w:w + WINDOW], b[w:w + WINDOW]
        se = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / WINDOW)
        assert abs(x.mean() - y.mean()) < 4 * se, (w, x.mean(), y.mean(), se)
    # and the test has power: both runs learn, by far more than the tolerance
    assert a[:20].mean() - a[-WINDOW:].mean() > 4 * se and b[:20].mean() - b[-WINDOW:].mean() > 4 * se
