"""Training from the Python API: a small budget on two moons must lower the sliced-Wasserstein distance
to held-out data well below that of prior samples; determinism, bit-for-bit resume and the errors."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import ConfigError

# Budget: measured to run in ~10-15 s on 2 CPU cores. n = 8000 evaluation points: the SW noise floor
# between two independent 8000-point two-moons samples is ~0.02-0.03 (at 2000 points it is ~0.05-0.10,
# too close to the prior's ~0.29 for a 5x criterion to be meaningful).
STEPS, WIDTH, DEPTH, BATCH, LR, EMA = 800, 128, 2, 512, 3e-3, 0.99
N_EVAL = 8000


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.slow  # 1000 training steps: 10-20 s on two cores (CI runs -m slow)
def test_training_on_two_moons_beats_the_prior_5x(reg):
    data = reg.create("dataset", "two_moons", n=8000, seed=0)
    corr = reg.create("corruption", "gaussian", schedule="cosine", prediction="v")
    time = reg.create("time", "continuous")
    torch.manual_seed(0)  # network initialisation
    net = reg.create("model", "mlp", data_shape=[2], width=WIDTH, depth=DEPTH)
    run = udm.train(net, corr, time, data, steps=STEPS, batch_size=BATCH, lr=LR, ema=EMA, warmup=20, seed=0)
    assert run.steps == STEPS and len(run.losses) == STEPS and run.best is run.ema
    assert sum(run.losses[-50:]) < sum(run.losses[:50])

    held_out = reg.create("dataset", "two_moons", n=N_EVAL, seed=1)
    samples = udm.sample(run.ema, corr, time, shape=(N_EVAL, 2), sampler="ddim", steps=50,
                         generator=gen(0), registry=reg)
    prior = corr.sample_prior((N_EVAL, 2), gen(1))
    sw = reg.get("metric", "sliced_wasserstein")
    d_model, d_prior = sw(samples, held_out), sw(prior, held_out)
    print(f"SW model {d_model:.4f}, prior {d_prior:.4f}, ratio {d_prior / d_model:.2f}")
    assert d_prior / d_model >= 5.0, (d_model, d_prior)


def _tiny(reg, seed=0):
    torch.manual_seed(seed)
    return (reg.create("model", "mlp", data_shape=[2], width=16, depth=1),
            reg.create("corruption", "gaussian", schedule="cosine"), reg.create("time", "discrete", steps=100))


def test_training_is_deterministic_and_resumes_bit_for_bit(reg):
    data = reg.create("dataset", "eight_gaussians", n=512, seed=0)
    net, corr, time = _tiny(reg)
    a = udm.train(net, corr, time, data, steps=10, batch_size=32, seed=3)
    net2, _, _ = _tiny(reg)
    b = udm.train(net2, corr, time, data, steps=10, batch_size=32, seed=3)
    assert a.losses == b.losses
    # 5 + 5 steps through a saved state == 10 steps straight
    net3, _, _ = _tiny(reg)
    first = udm.Trainer(net3, corr, time, seed=3)
    first.fit(data, steps=5, batch_size=32)
    state = first.state_dict()
    net4, _, _ = _tiny(reg, seed=99)
    second = udm.Trainer(net4, corr, time, seed=12345)
    second.load_state_dict(state)
    rest = second.fit(data, steps=5, batch_size=32)
    assert rest.losses == a.losses[5:]
    for p, q in zip(second.ema.parameters(), a.ema.parameters()):
        assert torch.equal(p, q)


def test_training_callback_and_warmup(reg):
    data = reg.create("dataset", "two_moons", n=256, seed=0)
    net, corr, time = _tiny(reg)
    seen = []
    udm.train(net, corr, time, data, steps=4, batch_size=16, lr=1e-3, warmup=4, callback=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4]
    assert [round(s.lr, 12) for s in seen] == [5e-4, 7.5e-4, 1e-3, 1e-3]
    assert all(math.isfinite(s.loss) for s in seen)


def test_training_errors(reg):
    net, corr, time = _tiny(reg)
    data = reg.create("dataset", "two_moons", n=64, seed=0)
    with pytest.raises(ConfigError, match=r"udm\.Trainer\.ema: the value must be a number in \[0, 1\); got 1\.0\. "
                                          r"Pass ema=<a number in \[0, 1\)>\."):
        udm.Trainer(net, corr, time, ema=1.0)
    with pytest.raises(ConfigError, match=r"udm\.Trainer\.lr: the value must be a number > 0; got 0\."):
        udm.Trainer(net, corr, time, lr=0)
    trainer = udm.Trainer(net, corr, time)
    with pytest.raises(ConfigError, match=r"udm\.Trainer\.fit\.steps: the value must be an integer >= 0; got -1\."):
        trainer.fit(data, steps=-1, batch_size=8)
    with pytest.raises(ConfigError, match=r"udm\.Trainer\.fit\.batch_size: the value must be an integer >= 1; got 0\."):
        trainer.fit(data, steps=1, batch_size=0)
    bad = data.clone()
    bad[:] = float("nan")
    with pytest.raises(FloatingPointError, match=r"train: the loss must be finite; got nan at step 1\. Lower train\.lr"):
        trainer.fit(bad, steps=1, batch_size=8)
