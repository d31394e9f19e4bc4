"""An exact insertion oracle for a tiny enumerable language: the generated distribution's total-variation
distance to the truth falls as the number of reverse steps grows.

The oracle is what an ideal network of the ``insertion`` kind would output: q(x_0 | x_t) computed by
enumerating every (x_0, kept set) pair consistent with x_t (posterior weight p(x_0) (1 - tau)^m
tau^(n - m)), then factorised the way the network is: independent per-gap count marginals, and token
marginals per placeholder given the whole count vector. The factorisation is the only approximation,
so one step (x0_hat straight from q(x_0 | empty)) is biased and more steps, each inserting fewer
tokens, approach the data law.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import torch

import udm
from udm.plugins.delete import Delete

DATA = {(): 0.1, (0,): 0.1, (0, 1): 0.25, (1, 0): 0.15, (1, 1, 0): 0.2, (0, 0, 1): 0.2}
VOCAB, LONGEST, T = 2, 3, 16


def _posterior(x_t: tuple, tau: float):
    """[(x0, kept index set, weight)] over every embedding of x_t in every x0 of the data."""
    out = []
    for x0, p in DATA.items():
        n, m = len(x0), len(x_t)
        for kept in itertools.combinations(range(n), m):
            if tuple(x0[i] for i in kept) == x_t:
                out.append((x0, kept, p * (1 - tau) ** m * tau ** (n - m)))
    return out


def _counts(x0, kept):
    bounds = (-1,) + kept + (len(x0),)
    return tuple(bounds[g + 1] - bounds[g] - 1 for g in range(len(kept) + 1))


class _OracleOutput:
    def __init__(self, count_logits, tau):
        self.count_logits, self.tau, self.max_length = count_logits, tau, LONGEST

    def token_logits(self, x, holes):
        tau = float(self.tau[0])  # the sampler calls with one time per batch
        shown = torch.where(holes, torch.full_like(x.tokens, -2), x.tokens)
        uniq, inverse = torch.unique(torch.cat([x.lengths[:, None], shown], 1), dim=0, return_inverse=True)
        table = torch.zeros(len(uniq), x.tokens.shape[1], VOCAB, dtype=torch.float64)
        for u, row in enumerate(uniq.tolist()):
            shape = tuple(None if v == -2 else v for v in row[1: 1 + row[0]])
            x_t = tuple(v for v in shape if v is not None)
            want = _counts(shape, tuple(i for i, v in enumerate(shape) if v is not None))
            n = len(shape)
            probs = torch.zeros(n, VOCAB, dtype=torch.float64)
            for x0, kept, w in _posterior(x_t, tau):
                if _counts(x0, kept) == want:
                    probs[torch.arange(n), torch.tensor(x0, dtype=torch.long)] += w
            table[u, :n] = torch.where(probs.sum(1, keepdim=True) > 0, probs.clamp_min(1e-300).log(),
                                       torch.zeros_like(probs))
        return table[inverse]


class ExactInsertion:
    """Maps (x_t, time encoding n = t T) to the factorised exact posterior (the insertion protocol)."""

    def __call__(self, x_t: udm.Sequences, t_enc: torch.Tensor):
        tau = float(t_enc[0]) / T  # the sampler calls with one time per batch
        width = x_t.tokens.shape[1]
        uniq, inverse = torch.unique(torch.cat([x_t.lengths[:, None], x_t.tokens], 1), dim=0, return_inverse=True)
        table = torch.zeros(len(uniq), width + 1, LONGEST + 1, dtype=torch.float64)
        for u, row in enumerate(uniq.tolist()):
            x = tuple(row[1: 1 + row[0]])
            probs = torch.zeros(len(x) + 1, LONGEST + 1, dtype=torch.float64)
            for x0, kept, w in _posterior(x, tau):
                for g, c in enumerate(_counts(x0, kept)):
                    probs[g, c] += w
            table[u, : len(x) + 1] = torch.where(probs.sum(1, keepdim=True) > 0, probs.clamp_min(1e-300).log(),
                                                 torch.zeros_like(probs))
        logits = table[inverse]
        return _OracleOutput(logits, torch.tensor([tau]))


def total_variation(samples: list[tuple]) -> float:
    freq = Counter(samples)
    keys = set(freq) | set(DATA)
    return 0.5 * sum(abs(freq.get(k, 0) / len(samples) - DATA.get(k, 0.0)) for k in keys)


def test_oracle_tv_falls_with_steps(reg):
    c, time_type = Delete(), reg.create("time", "discrete", steps=T)
    denoiser = udm.Denoiser(ExactInsertion(), c, time_type)
    n = 4000
    # Monte-Carlo bias of the TV estimate: E|p_hat - p| <= sqrt(p (1 - p) / n) per outcome
    noise = sum(math.sqrt(p * (1 - p) / n) for p in DATA.values()) + 0.01
    tv = {}
    for steps in (1, 2, 4, 8, 16):
        g = torch.Generator().manual_seed(steps)
        x = udm.sample(denoiser, c, time_type, shape=(n,), sampler="invert", steps=steps, generator=g, registry=reg)
        tv[steps] = total_variation([tuple(r) for r in x.tolist()])
    print("TV by steps:", {k: round(v, 4) for k, v in tv.items()})
    values = list(tv.values())
    assert all(b <= a + noise for a, b in zip(values, values[1:])), tv
    assert tv[16] < tv[1] / 3 and tv[1] > 3 * noise, tv
    assert tv[16] < 2 * noise, tv
