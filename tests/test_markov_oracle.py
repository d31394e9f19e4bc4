"""The exact Markov-chain oracle (udm.testing.MarkovChain / MarkovOracle) against brute-force enumeration."""

import itertools
import math

import pytest
import torch

from udm.testing import MarkovChain, MarkovOracle

V, L = 4, 5
ALL = torch.tensor(list(itertools.product(range(V), repeat=L)))


@pytest.fixture(scope="module")
def chain():
    return MarkovChain.random(V, L, seed=3)


def test_probs_is_the_chain_law(chain):
    p = chain.probs()
    assert p.shape == (V**L,)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)
    assert torch.allclose(chain.log_prob(ALL).exp(), p, rtol=1e-12, atol=0)
    assert torch.equal(chain.encode(ALL), torch.arange(V**L))


def test_sample_follows_the_law(chain):
    x = chain.sample(40000, torch.Generator().manual_seed(0))
    # first-token frequencies within 5 binomial standard errors
    freq = torch.bincount(x[:, 0], minlength=V).double() / len(x)
    se = (chain.init * (1 - chain.init) / len(x)).sqrt()
    assert ((freq - chain.init).abs() <= 5 * se + 1e-12).all()


@pytest.mark.parametrize("conditioned", [False, True])
def test_marginals_match_enumeration(chain, conditioned):
    g = torch.Generator().manual_seed(1)
    ref = torch.randint(0, V, (4, L), generator=g)
    ref[0, 2] = V  # "no reference" at one position
    same = torch.rand(4, L, generator=g, dtype=torch.float64)
    diff = torch.rand(4, L, generator=g, dtype=torch.float64)
    count = torch.tensor([1, 2, 3, 4]) if conditioned else None
    got = chain.marginals(ref, same, diff, count)
    p = chain.probs()
    for b in range(4):
        isd = ALL != ref[b]
        w = p * torch.where(isd, diff[b], same[b]).prod(1)
        if conditioned:
            w = w * (isd.sum(1) == count[b])
        want = torch.stack([torch.stack([(w * (ALL[:, l] == v)).sum() for v in range(V)]) for l in range(L)])
        assert torch.allclose(got[b], want / want.sum(-1, keepdim=True), atol=1e-12)


class _Mask:
    mask_id = V

    def to_x0(self, out, x_t, t):
        return out


class _Replace:
    def __init__(self, exact):
        self.exact_count = exact

    def tau(self, t):
        return torch.as_tensor(t, dtype=torch.float64) * 0.6

    def to_x0(self, out, x_t, t):
        return out


def _brute(chain, lik):
    w = chain.probs() * lik
    w = w / w.sum()
    return torch.stack([torch.stack([(w * (ALL[:, l] == v)).sum() for v in range(V)]) for l in range(L)])


def test_oracle_mask_posterior(chain):
    x_t = torch.tensor([[0, V, 2, V, V], [V, V, V, V, V]])
    got = MarkovOracle(chain, _Mask()).logits(x_t, torch.full((2,), 0.5)).exp()
    for b in range(2):
        vis = x_t[b] != V
        lik = (ALL[:, vis] == x_t[b, vis]).all(1).double()
        assert torch.allclose(got[b], _brute(chain, lik), atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_oracle_replace_posterior(chain, exact):
    t = torch.full((2,), 0.5, dtype=torch.float64)
    tau, k = 0.3, round(0.3 * L)
    x_t = torch.tensor([[0, 1, 2, 3, 0], [3, 3, 3, 3, 3]])
    got = MarkovOracle(chain, _Replace(exact)).logits(x_t, t).exp()
    for b in range(2):
        nd = (ALL != x_t[b]).sum(1)
        lik = (nd == k).double() if exact else ((1 - tau) ** (L - nd) * (tau / (V - 1)) ** nd).double()
        assert torch.allclose(got[b], _brute(chain, lik), atol=1e-12)


def test_tv_is_exact(chain):
    p = chain.probs()
    one = ALL[7:8].expand(100, L)
    assert math.isclose(chain.tv(one), 1 - float(p[7]), rel_tol=1e-12)
    x = chain.sample(5000, torch.Generator().manual_seed(2))
    emp = torch.bincount(chain.encode(x), minlength=V**L).double() / 5000
    assert math.isclose(chain.tv(x), 0.5 * float((emp - p).abs().sum()), rel_tol=1e-12)
    bad = x.clone()
    bad[:10, 0] = V  # out-of-vocabulary rows are mass outside the support
    assert chain.tv(bad) >= chain.tv(x) - 10 / 5000
    mean, std = chain.tv_floor(5000, seeds=3)
    assert 0 < mean < 0.5 and std >= 0
