"""Likelihoods of small trained models on CPU, with every estimator that applies, on held-out data.

* two moons: ``gaussian`` (cosine, v-prediction), continuous time, MLP; a density (no quantisation): nats/dim.
* digits: ``gaussian`` (cosine, v-prediction), continuous time, U-Net; 17 declared levels: bits/dim. Three
  seeds (training and evaluation), trained on 1500 images, scored on the other 297.
* brackets: ``mask`` (continuous time, Transformer) on strings of length 16, and ``delete`` (discrete time,
  the insertion Transformer) on strings of even length 2..16; bits/token. Both languages are uniform, so
  the true NLL is known: log(C_8 2^8) = log 366080 nats per string of length 16 (0.80 nats/token), and for
  the variable lengths log 8 + log(C_m 2^m) for length 2m.

Run: python benchmarks/likelihood_trained.py [--only moons digits mask delete] [--steps N] (about 15 CPU minutes
with the defaults on one thread; results in benchmarks/README.md and docs/howto-likelihood.md).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import udm

Q17 = udm.Quantisation(17, (-1.0, 1.0))
#: training steps per model (a few CPU minutes each on one thread)
STEPS = {"moons": 3000, "digits": 1500, "mask": 2000, "delete": 2000}


def row(what: str, result: udm.LikelihoodResult, seconds: float) -> None:
    unit, value, se = (("bits/dim", result.bits_per_dim, result.stderr_bits) if result.bits_per_dim is not None
                       else ("nats/dim", result.nats_per_dim, result.stderr))
    t = result.terms
    print(f"| {what} | {result.estimator} | {value:.4f} +- {se:.4f} {unit} | prior {t.prior:.4f}, diffusion "
          f"{t.diffusion:.4f}, reconstruction {t.reconstruction:.4f}, dequantisation {t.dequantisation:.4f} (nats/dim) "
          f"| {result.n} | {seconds:.0f} s |", flush=True)


def score(what: str, model, data, corruption, time_type, runs: list[tuple[str, dict]], **common) -> None:
    for estimator, options in runs:
        start = time.perf_counter()
        result = udm.likelihood(model, data, estimator, corruption=corruption, time_type=time_type, **common,
                                **options)
        extra = ", ".join(f"{k}={v}" for k, v in options.items())
        row(f"{what}{' (' + extra + ')' if extra else ''}", result, time.perf_counter() - start)


def train(net, corruption, time_type, data, steps: int, seed: int, lr: float = 2e-3, batch: int = 256):
    trainer = udm.Trainer(net, corruption, time_type, lr=lr, ema=0.995, warmup=100, seed=seed)
    start = time.perf_counter()
    losses = trainer.fit(data, steps=steps, batch_size=batch).losses
    print(f"<!-- trained {steps} steps in {time.perf_counter() - start:.0f} s, loss {sum(losses[:50]) / 50:.4f} -> "
          f"{sum(losses[-50:]) / 50:.4f} -->", flush=True)
    return trainer.ema


def moons(steps: int, seed: int = 0) -> None:
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="cosine", prediction="v")
    time_type = reg.create("time", "continuous")
    torch.manual_seed(seed)
    net = reg.create("model", "mlp", data_shape=[2], width=128, depth=3)
    model = train(net, corruption, time_type, reg.create("dataset", "two_moons", n=20000, seed=seed), steps, seed)
    held = reg.create("dataset", "two_moons", n=1000, seed=seed + 1)
    score("two moons", model, held, corruption, time_type,
          [("elbo_discrete", {"steps": 1000}), ("elbo_discrete", {"steps": 1000, "variance": "small"}),
           ("elbo_discrete", {"steps": 50}), ("elbo_continuous", {"draws": 16}), ("ode", {}),
           ("ode", {"trace": "hutchinson", "probes": 4})], seed=seed)


def digits(steps: int, seed: int) -> None:
    reg = udm.registry()
    images = reg.create("dataset", "digits", seed=0)  # one fixed split for every seed
    train_set, held = images[:1500], images[1500:]
    corruption = reg.create("corruption", "gaussian", schedule="cosine", prediction="v")
    time_type = reg.create("time", "continuous")
    torch.manual_seed(seed)
    net = reg.create("model", "unet", data_shape=[1, 8, 8], channels=16, channel_mult=[1, 2], attention=False)
    model = train(net, corruption, time_type, train_set, steps, seed, batch=128)
    score(f"digits, seed {seed}", model, held, corruption, time_type,
          [("elbo_discrete", {"steps": 1000, "draws": 64}), ("elbo_continuous", {"draws": 16}),
           ("ode", {"rtol": 1e-4, "atol": 1e-4})], seed=seed, quantisation=Q17)


def mask(steps: int, seed: int = 0) -> None:
    reg = udm.registry()
    corruption = reg.create("corruption", "mask", vocab_size=4)
    time_type = reg.create("time", "continuous")
    torch.manual_seed(seed)
    net = reg.create("model", "transformer", vocab_size=4, max_length=16, width=64, depth=2, heads=4)
    model = train(net, corruption, time_type, reg.create("dataset", "brackets", n=20000, length=16, seed=seed),
                  steps, seed, lr=1e-3, batch=128)
    held = reg.create("dataset", "brackets", n=1000, length=16, seed=seed + 1)
    print(f"<!-- true NLL: {math.log(366080) / 16 / math.log(2):.4f} bits/token -->")
    score("brackets, mask", model, held, corruption, time_type,
          [("elbo_masked", {"draws": 8}), ("elbo_masked", {"steps": 16}), ("elbo_masked", {"steps": 100})], seed=seed)


def delete(steps: int, seed: int = 0) -> None:
    reg = udm.registry()
    corruption = reg.create("corruption", "delete")
    time_type = reg.create("time", "discrete", steps=100)
    torch.manual_seed(seed)
    net = reg.create("model", "insertion", vocab_size=4, max_length=16, width=64, depth=2, heads=4)
    data = reg.create("dataset", "brackets", n=20000, length=16, variable_length=True, seed=seed)
    model = train(net, corruption, time_type, data, steps, seed, lr=1e-3, batch=128)
    held = reg.create("dataset", "brackets", n=1000, length=16, variable_length=True, seed=seed + 1)
    m = held.lengths.double() / 2
    catalan = torch.lgamma(2 * m + 1) - torch.lgamma(m + 2) - torch.lgamma(m + 1)
    true = float((math.log(8) + catalan + m * math.log(2)).sum() / held.lengths.sum()) / math.log(2)
    print(f"<!-- true NLL of these strings: {true:.4f} bits/token -->")
    score("brackets, delete", model, held, corruption, time_type,
          [("elbo_deletion", {"draws": 8}), ("elbo_deletion", {"steps": 20, "draws": 8})], seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps of every model (default: STEPS)")
    ap.add_argument("--only", nargs="*", default=["moons", "digits", "mask", "delete"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| data, model | estimator | value | terms | examples | time |\n|---|---|---|---|---|---|")
    steps = {k: args.steps or v for k, v in STEPS.items()}
    if "moons" in args.only:
        moons(steps["moons"])
    if "digits" in args.only:
        for seed in (0, 1, 2):
            digits(steps["digits"], seed)
    if "mask" in args.only:
        mask(steps["mask"])
    if "delete" in args.only:
        delete(steps["delete"])


if __name__ == "__main__":
    main()
