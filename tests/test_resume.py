"""Resume: a run killed with SIGKILL mid-training, then resumed, ends bit-for-bit equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from udm import checkpoint

EXP = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 32, depth: 1, time_dim: 16}
data: {name: two_moons, n: 512}
train: {steps: 300, batch_size: 64, lr: 1e-3, ema: 0.9, warmup: 50}
run: {checkpoint_every: 25, keep: 2, log_every: 10}
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: no spinning threads on a busy machine


def _cmd(exp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "udm", "train", str(exp), "--out", str(out), *extra]


def _tensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "step-00000300" / name))


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.mark.slow  # three training subprocesses: 10-20 s on two cores (CI runs -m slow)
def test_sigkill_then_resume_is_bit_for_bit(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP)
    subprocess.run(_cmd(exp, tmp_path / "full"), check=True, capture_output=True, timeout=300, env=ENV)

    victim = subprocess.Popen(_cmd(exp, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=ENV)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpts / "step-00000100").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    latest = checkpoint.latest_checkpoint(ckpts)
    assert latest is not None and 100 <= int(latest.name.split("-")[1]) < 300, "killed after finishing: no test"

    resumed = subprocess.run(_cmd(exp, tmp_path / "killed", "--resume"), capture_output=True, text=True, timeout=300,
                             env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
        a, b = _tensors(tmp_path / "full", name), _tensors(tmp_path / "killed", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state = [json.loads((run / "checkpoints" / "step-00000300" / "state.json").read_text())
             for run in (tmp_path / "full", tmp_path / "killed")]
    assert state[0]["scheduler"] == state[1]["scheduler"] and state[0]["optimizer"] == state[1]["optimizer"]
    assert _losses(tmp_path / "full") == _losses(tmp_path / "killed")  # metrics.jsonl rewritten identically


@pytest.mark.slow  # two training subprocesses: about 15 s on two cores (CI runs -m slow)
def test_resume_of_a_finished_run_changes_nothing_and_can_extend_it(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP.replace("steps: 300", "steps: 40"))
    run = tmp_path / "run"
    subprocess.run(_cmd(exp, run), check=True, capture_output=True, timeout=300, env=ENV)
    before = (run / "checkpoints" / "step-00000040" / "model.safetensors").read_bytes()
    subprocess.run(_cmd(exp, run, "--resume"), check=True, capture_output=True, timeout=300, env=ENV)
    assert (run / "checkpoints" / "step-00000040" / "model.safetensors").read_bytes() == before
    subprocess.run(_cmd(exp, run, "--resume", "--set", "train.steps=60"), check=True, capture_output=True,
                   timeout=300, env=ENV)
    assert checkpoint.latest_checkpoint(run / "checkpoints").name == "step-00000060"
    assert [s for s, _ in _losses(run)] == [10, 20, 30, 40, 50, 60]
