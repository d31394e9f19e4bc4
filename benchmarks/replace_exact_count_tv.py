"""Exact-count replacement on the exact Markov oracle: TV of the samples to the data law against the steps,
for three ways of predicting x0_hat from the oracle's exact per-position posterior marginals.

* ``per position`` (the old behaviour): each position drawn independently; x0_hat differs from x_t in the
  wrong number of positions and ``invert`` re-randomises tokens the model agreed with;
* ``constrained`` (``ReplaceCorruption.sample_x0``): exactly k_t differences, position l with probability
  d_l (systematic sampling), its token from the marginal restricted to tokens other than x_t,l;
* ``top-k greedy`` (``family greedy=True``): the k_t most confident disagreements and their modes.

    python benchmarks/replace_exact_count_tv.py           # about 2 minutes on one CPU thread

The floor is the TV of n true samples (mean +- sd over 5 seeds): the best any sampler can show at n.
"""

from __future__ import annotations

import torch

import udm
from udm.plugins.replace import ReplaceCorruption
from udm.samplers import invert
from udm.testing import MarkovChain, MarkovOracle

STEPS = (1, 2, 4, 8, 16)


def main() -> None:
    torch.set_num_threads(1)
    for vocab, length, n in ((5, 6, 8000), (6, 8, 10000)):
        chain = MarkovChain.random(vocab, length, sharpness=2.0, seed=0)
        c = ReplaceCorruption(vocab, exact_count=True)
        mean, std = chain.tv_floor(n, seeds=5)
        oracle = MarkovOracle(chain, c)

        def per_position(x_t, t, generator=None):
            return udm.Categorical().point(oracle.logits(x_t, t), generator)

        rows = {"per position": per_position, "constrained": oracle,
                "top-k greedy": MarkovOracle(chain, c, udm.Categorical(greedy=True))}
        print(f"\nV = {vocab}, L = {length}, n = {n}: floor {mean:.4f} +- {std:.4f}")
        print("steps".ljust(14) + "".join(f"{s:>8d}" for s in STEPS))
        for name, den in rows.items():
            tvs = []
            for steps in STEPS:
                x = invert(den, c, torch.linspace(1, 0, steps + 1, dtype=torch.float64),
                           c.sample_prior((n, length), torch.Generator().manual_seed(0)),
                           generator=torch.Generator().manual_seed(0))
                tvs.append(chain.tv(x))
            print(name.ljust(14) + "".join(f"{v:8.4f}" for v in tvs), flush=True)


if __name__ == "__main__":
    main()
