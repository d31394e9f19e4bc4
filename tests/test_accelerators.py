"""``run.device: auto``, bf16/fp16 autocast of the network only, and ``torch.compile`` (on CPU)."""

from __future__ import annotations

import pytest
import torch

import udm
from udm import accelerators
from udm.accelerators import Autocast, accelerate, resolve_device
from udm.errors import ConfigError
from udm.losses import diffusion_loss

from conftest import run_tiny


def test_device_auto_takes_the_first_available_in_order(monkeypatch):
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(accelerators, "AUTO_DEVICES", (("cuda", lambda: False), ("mps", lambda: True),
                                                       ("cpu", lambda: True)))
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"run\.device: the device must be 'auto' or a torch device such as 'cpu', "
                                          r"'cuda', 'cuda:1', 'mps'; got 'gpu0'"):
        resolve_device("gpu0")


class _Spy(torch.nn.Module):
    """A tiny network that records the dtype its Linear layer computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, x, t):
        out = self.lin(torch.cat([x, t[:, None].to(x.dtype)], 1))
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_the_network_in_low_precision_and_returns_float32(precision, dtype):
    net = _Spy()
    fast = accelerate(net, precision=precision)
    x, t = torch.randn(4, 2), torch.rand(4)
    out = fast(x, t)
    assert isinstance(fast, Autocast) and net.seen == [dtype] and out.dtype == torch.float32
    exact = net(x, t)
    assert torch.allclose(out, exact, rtol=2e-2, atol=2e-2) and not torch.equal(out, exact)  # rounded, not exact
    assert accelerate(net) is net  # fp32, no compile: the network itself
    with pytest.raises(ConfigError, match=r"train\.precision: precision must be one of 'fp32', 'bf16', 'fp16'; "
                                          r"got 'fp8'"):
        accelerate(net, precision="fp8", where="train.precision")


def test_only_the_network_call_is_autocast_the_corruption_and_loss_stay_exact():
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time = reg.create("time", "discrete", steps=100)
    net = _Spy()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    trainer = udm.Trainer(net, corruption, time, precision="bf16")
    got = diffusion_loss(trainer.loss_network, corruption, time, x0, torch.Generator().manual_seed(1))
    # by hand: the same draws, x_t and target in float32/float64 as always; only the network output is bf16-rounded
    g = torch.Generator().manual_seed(1)
    t = time.sample_train(64, g)
    eps = corruption.sample_noise(x0, g)
    x_t = corruption.forward(x0, eps, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x_t, time.encode(t))
    assert out.dtype == torch.bfloat16 and t.dtype == torch.float64 and x_t.dtype == torch.float32
    expected = udm.Gaussian().loss(out.float(), corruption.target(x0, eps, t)).mean()
    assert got.loss.dtype == torch.float32 and torch.equal(got.loss, expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_with_mixed_precision_learns_and_keeps_float32_weights(precision):
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="cosine")
    time = reg.create("time", "discrete", steps=100)
    data = reg.create("dataset", "two_moons", n=512)
    runs = {}
    for p in ("fp32", precision):
        torch.manual_seed(0)
        net = reg.create("model", "mlp", data_shape=[2], width=32, depth=1, time_dim=16)
        trainer = udm.Trainer(net, corruption, time, lr=1e-2, ema=0.9, precision=p)
        runs[p] = trainer.fit(data, steps=80, batch_size=128)
        assert all(w.dtype == torch.float32 for w in net.parameters())
        assert trainer.scaler.is_enabled() == (p == "fp16")  # only fp16 scales the loss
    lo, hi = runs["fp32"].losses, runs[precision].losses
    assert hi != lo  # it really ran in another precision ...
    assert hi[0] == pytest.approx(lo[0], rel=1e-2)  # the same weights at step 1: only the output's rounding differs
    assert abs(sum(hi[-10:]) - sum(lo[-10:])) / sum(lo[-10:]) < 0.05  # ... and it learned the same


def test_sampling_in_bf16_through_the_runner(tmp_path):
    full = run_tiny(tmp_path / "fp32")
    half = run_tiny(tmp_path / "bf16", "sample.precision=bf16")
    from safetensors.torch import load_file

    a = load_file(str(full / "samples" / "ddim-5steps-seed0.safetensors"))["samples"]
    b = load_file(str(half / "samples" / "ddim-5steps-seed0.safetensors"))["samples"]
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # bf16 keeps ~3 significant digits over 5 DDIM steps


@pytest.mark.slow  # torch.compile's first call builds C++ kernels: about a minute on two CPU cores
def test_compile_gives_the_eager_losses_and_samples(tmp_path):
    eager = run_tiny(tmp_path / "eager", "train.steps=5")
    compiled = run_tiny(tmp_path / "compiled", "train.steps=5", "train.compile=true", "sample.compile=true")
    import json

    from safetensors.torch import load_file

    rows = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (eager, compiled)]
    losses = [[row["loss"] for row in r if "loss" in row] for r in rows]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = (load_file(str(r / "samples" / "ddim-5steps-seed0.safetensors"))["samples"] for r in (eager, compiled))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
