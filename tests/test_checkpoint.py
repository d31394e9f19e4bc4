"""Checkpoints: safetensors + JSON only, exact round trip of everything training changes, atomic writes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import udm
from udm import checkpoint
from udm.errors import ConfigError


class Standardise(udm.GaussianNoise, udm.Corruption):
    """x_t = (1 - t) (x_0 - mu) / sd + t eps with mu, sd fitted on the data: a corruption with statistics."""

    name = "standardise"

    def __init__(self) -> None:
        self.mean, self.std = torch.zeros(2), torch.ones(2)

    def fit(self, data):
        self.mean, self.std = data.mean(0), data.std(0)

    def forward(self, x0, eps, t):
        t = udm.append_dims(t.to(x0.dtype), x0.ndim)
        return (1 - t) * (x0 - self.mean) / self.std + t * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator, device=device)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"], state["std"]


def _trainer(seed: int = 0) -> udm.Trainer:
    reg = udm.registry()
    torch.manual_seed(seed)
    net = reg.create("model", "mlp", data_shape=[2], width=16, depth=1, time_dim=8)
    return udm.Trainer(net, Standardise(), reg.create("time", "continuous"), lr=1e-2, ema=0.9, warmup=5, seed=seed)


def _data() -> torch.Tensor:
    return udm.registry().create("dataset", "two_moons", n=256, seed=0)


def _run(trainer: udm.Trainer, steps: int) -> None:
    for _ in range(steps):
        trainer.train_step(trainer.next_batch(_data(), 32))


def test_round_trip_continues_bit_for_bit(tmp_path: Path):
    a = _trainer(0)
    a.corruption.fit(_data())
    _run(a, 7)
    np.random.seed(3)
    random.seed(4)
    path = checkpoint.save_checkpoint(tmp_path, a, corruption=a.corruption)
    expected_np, expected_py = np.random.rand(), random.random()

    b = _trainer(seed=123)  # different initial weights, generators and statistics
    ckpt = checkpoint.load_checkpoint(path, optimizer=b.optimizer)
    b.load_state_dict(ckpt.trainer)
    b.corruption.load_state_dict(ckpt.corruption)
    checkpoint.set_rng_state(b, ckpt.rng[0])
    assert np.random.rand() == expected_np and random.random() == expected_py
    assert torch.equal(b.corruption.mean, a.corruption.mean) and b.step == 7
    _run(a, 5)
    _run(b, 5)
    for pa, pb in zip([*a.network.parameters(), *a.ema.parameters()], [*b.network.parameters(), *b.ema.parameters()]):
        assert torch.equal(pa, pb)
    assert a.scheduler.get_last_lr() == b.scheduler.get_last_lr()
    assert b.optimizer.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


def test_only_safetensors_and_json_are_written(tmp_path: Path):
    t = _trainer()
    _run(t, 2)
    path = checkpoint.save_checkpoint(tmp_path, t, corruption=t.corruption)
    for f in path.iterdir():
        if f.suffix == ".safetensors":
            assert all(isinstance(v, torch.Tensor) for v in load_file(str(f)).values())
        else:
            assert f.name == "state.json" and json.loads(f.read_text())["step"] == 2
    opt = load_file(str(path / "optimizer.safetensors"))
    assert {k.split(".", 2)[2] for k in opt} == {"step", "exp_avg", "exp_avg_sq"}


def test_keeps_the_last_k(tmp_path: Path):
    t = _trainer()
    for _ in range(5):
        _run(t, 1)
        checkpoint.save_checkpoint(tmp_path, t, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    assert list(tmp_path.glob(".tmp-*")) == []


def test_loading_an_incomplete_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"checkpoint: '.*' must be a complete checkpoint directory"):
        checkpoint.load_checkpoint(tmp_path)


KILL_WHILE_WRITING = """
import os, signal, sys, torch, udm
from udm import checkpoint
sys.path.insert(0, {tests!r})
from test_checkpoint import _run, _trainer
t = _trainer()
_run(t, 3)
checkpoint.save_checkpoint({out!r}, t)
_run(t, 3)
real, calls = checkpoint._write_tensors, []
def dying(path, tensors):
    calls.append(path)
    if len(calls) == 3:  # model and EMA written, optimizer half way: die
        open(path, "wb").write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, tensors)
checkpoint._write_tensors = dying
checkpoint.save_checkpoint({out!r}, t)
"""


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path: Path):
    script = KILL_WHILE_WRITING.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000003"]
    assert len(list(tmp_path.glob(".tmp-step-00000006-*"))) == 1  # the interrupted write, out of the way
    ckpt = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path))
    fresh = _trainer(seed=5)
    fresh.load_state_dict(ckpt.trainer)
    assert fresh.step == 3
    checkpoint.clean(tmp_path)
    assert list(tmp_path.glob(".tmp-*")) == []
