"""Two-process torchrun (gloo, CPU) trains like one process with the same global batch: the same batch
indices, every rank's network sees half of the global batch, gradients are averaged over the ranks, and
after a few steps the parameters equal the single-process ones up to float summation order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import udm

EXP = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 32, depth: 1, time_dim: 16}
data: {name: two_moons, n: 2000}
train: {steps: 6, batch_size: 128, lr: 3e-3, ema: 0.9}
run: {checkpoint_every: 3, keep: 2, log_every: 1}
"""
WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS, BATCH = 6, 128


def _run(cmd: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow  # two torchrun processes: 10-20 s on two cores (CI runs -m slow)
def test_two_process_torchrun_matches_one_process(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXP)
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(exp),
          str(tmp_path / "two")], tmp_path)
    _run([sys.executable, str(WORKER), str(exp), str(tmp_path / "one")], tmp_path)
    one, r0, r1 = (_load(p) for p in (tmp_path / "one" / "rank0.pt", tmp_path / "two" / "rank0.pt",
                                      tmp_path / "two" / "rank1.pt"))
    # the same global batch indices on every rank and in the single process, batch_size of them per step
    assert one["indices"].shape == (STEPS, BATCH)
    assert torch.equal(r0["indices"], one["indices"]) and torch.equal(r1["indices"], one["indices"])
    # each rank's network sees its half of the global batch; the single process sees all of it
    assert one["seen"].tolist() == [BATCH] * STEPS
    assert r0["seen"].tolist() == r1["seen"].tolist() == [BATCH // 2] * STEPS
    # gradients are averaged over the ranks (identical after all-reduce) and equal the single process's
    assert torch.equal(r0["grads"], r1["grads"])
    torch.testing.assert_close(r0["grads"][0], one["grads"][0], rtol=1e-5, atol=1e-6)
    # and after STEPS AdamW steps the parameters agree to float summation order
    assert torch.equal(r0["params"], r1["params"])
    gap = float((r0["params"] - one["params"]).abs().max())
    assert gap < 1e-5, gap
    # rank 0 alone wrote the run directory; the checkpoint holds both ranks' RNG states, whose trainer
    # generators agree (the same global draws) while the global torch RNGs differ (per-rank dropout)
    rng = load_file(str(tmp_path / "two" / "run" / "checkpoints" / f"step-{STEPS:08d}" / "rng.safetensors"))
    assert {k.split(".")[0] for k in rng} == {"rank0", "rank1"}
    assert (rng["rank0.generator"] == rng["rank1.generator"]).all()
    assert (rng["rank0.data_generator"] == rng["rank1.data_generator"]).all()
    assert not (rng["rank0.torch"] == rng["rank1.torch"]).all()


def _shard_losses(net, corruption, time_type, x0, world):
    return [udm.diffusion_loss(net, corruption, time_type, x0, torch.Generator().manual_seed(3), shard=(r, world))
            for r in range(world)]


@pytest.mark.parametrize("name", ["gaussian", "replace", "delete"])
def test_sharded_loss_is_the_single_process_loss(reg, name):
    """diffusion_loss(shard=(rank, world)) draws t and eps for the whole global batch and keeps its slice: the
    per-sample losses of the shards, put together, are the single-process ones (tensor noise, a dataclass
    noise (replace: u and r), and udm.Sequences batches (delete))."""
    g = torch.Generator().manual_seed(0)
    time_type = reg.create("time", "continuous")
    if name == "gaussian":
        corruption, x0 = reg.create("corruption", "gaussian"), torch.randn(10, 3, generator=g)
        net = reg.create("model", "mlp", data_shape=[3], width=16, depth=1)
    elif name == "replace":
        corruption, x0 = reg.create("corruption", "replace", vocab_size=5), torch.randint(0, 5, (10, 6), generator=g)
        net = reg.create("model", "transformer", vocab_size=5, max_length=6, width=16, depth=1, heads=2)
    else:
        corruption = reg.create("corruption", "delete")
        x0 = udm.Sequences.pad_list([torch.randint(0, 5, (int(k),), generator=g).tolist() for k in range(1, 11)])
        net = reg.create("model", "insertion", vocab_size=5, max_length=12, width=16, depth=1, heads=2)
    whole = udm.diffusion_loss(net, corruption, time_type, x0, torch.Generator().manual_seed(3))
    for world in (2, 3):
        parts = _shard_losses(net, corruption, time_type, x0, world)
        assert [len(p.per_sample) for p in parts] == [len(i) for i in torch.arange(10).tensor_split(world)]
        torch.testing.assert_close(torch.cat([p.per_sample for p in parts]), whole.per_sample, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([p.t for p in parts]), whole.t)


def test_a_shard_of_unsupported_noise_is_a_clear_error(reg):
    class ListNoise(type(reg.create("corruption", "gaussian"))):
        def sample_noise(self, x0, generator):
            return [torch.randn(x0.shape[1:], generator=generator) for _ in range(len(x0))]

    net = reg.create("model", "mlp", data_shape=[3], width=8, depth=1)
    with pytest.raises(TypeError, match=r"diffusion_loss: a sharded batch must be made of tensors, Sequences or "
                                        r"dataclasses of tensors; got list\. Train on one process"):
        udm.diffusion_loss(net, ListNoise(), reg.create("time", "continuous"), torch.zeros(4, 3),
                           torch.Generator().manual_seed(0), shard=(0, 2))
