"""elbo_masked against the truth: token sequences from a random Markov chain (V = 6, L = 8) scored with the
exact posterior oracle (udm.testing.MarkovOracle), so the true NLL is known.

Prints, per token (nats), the true NLL and each bound's gap to it (mean of bound - truth over the examples +- its
standard error): independent masking in continuous time and on 4- and 100-step chains, exact-count masking on
Discrete(100) and in continuous time, and the exact-count training loss read as an "ELBO" on Discrete(100)
(issue 13, item 4: it falls below the NLL). Run: python benchmarks/likelihood_tokens.py [--n 8000] (about 10 s
on one thread).
"""

from __future__ import annotations

import argparse
import math

import torch

import udm
from udm.plugins.mask import MaskCorruption
from udm.plugins.time import Continuous, Discrete
from udm.testing import MarkovChain, MarkovOracle

V, L = 6, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    chain = MarkovChain.random(V, L, sharpness=2.0, seed=0)
    x0 = chain.sample(args.n, torch.Generator().manual_seed(0))
    nll = -chain.log_prob(x0)

    def gap(per_example: torch.Tensor) -> str:
        d = (per_example - nll) / L
        return f"{float(d.mean()):+.4f} +- {float(d.std() / math.sqrt(len(d))):.4f}"

    print(f"true NLL: {float(nll.mean()) / L:.4f} nats/token ({args.n} sequences)")
    for exact_count in (False, True):
        c = MaskCorruption(V, exact_count=exact_count)
        oracle = MarkovOracle(chain, c)
        for label, time in (("continuous", Continuous()), ("4 steps", Discrete(4)), ("100 steps", Discrete(100))):
            r = udm.likelihood(oracle, x0, "elbo_masked", corruption=c, time_type=time, draws=8, batch_size=4000)
            print(f"elbo_masked, exact_count={exact_count}, {label}: gap {gap(r.per_example)} nats/token", flush=True)
    c = MaskCorruption(V, exact_count=True)
    oracle = MarkovOracle(chain, c)

    class Exact(torch.nn.Module):
        def forward(self, x_t: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
            return oracle.logits(x_t, None).float()

    loss = udm.diffusion_loss(Exact(), c, Discrete(100), x0, torch.Generator().manual_seed(1)).per_sample.double()
    print(f"training loss (tau'/tau weighted), exact_count=True, Discrete(100), read as an ELBO: gap "
          f"{gap(loss * L)} nats/token")


if __name__ == "__main__":
    main()
