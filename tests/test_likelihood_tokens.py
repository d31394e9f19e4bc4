"""Likelihoods of token corruptions: masking against a Markov chain with its exact posterior oracle (the true NLL
is known), and the deletion chain's ELBO against an exact enumeration of its paths."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

import udm
from udm.likelihoods import Context
from udm.plugins._elbo_deletion import step_nll
from udm.plugins._elbo_masked import chain_weights
from udm.plugins.delete import Delete
from udm.plugins.mask import MaskCorruption
from udm.plugins.time import Continuous, Discrete
from udm.testing import MarkovChain, MarkovOracle

V, L = 6, 8


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def markov():
    chain = MarkovChain.random(V, L, sharpness=2.0, seed=0)
    x0 = chain.sample(8000, g(0))
    return chain, x0, -chain.log_prob(x0)


def gap(result: udm.LikelihoodResult, nll: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of the per-example bound minus the true NLL, per token."""
    d = (result.per_example - nll) / L
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def test_masked_elbo_is_within_one_percent_and_a_bound_for_independent_masking(markov):
    """With the exact posterior marginals the continuous-time MDLM bound is tight (one token at a time is revealed
    from its exact conditional), so the estimate is within 1% of the NLL; the 3-standard-error band is narrower
    than 1%, so the check has power."""
    chain, x0, nll = markov
    c = MaskCorruption(V)
    r = udm.likelihood(MarkovOracle(chain, c), x0, "elbo_masked", corruption=c, time_type=Continuous(), draws=8,
                       batch_size=4000)
    mean, se = gap(r, nll)
    truth = float(nll.mean()) / L
    assert mean > -3 * se and abs(mean) < 0.01 * truth and 3 * se < 0.01 * truth, (mean, se, truth)
    assert r.dequantisation == "tokens" and r.bits_per_dim == pytest.approx(r.nats_per_dim / math.log(2))


def test_masked_chain_bound_is_above_the_nll_and_tightens_with_steps(markov):
    """A 4-step chain reveals several dependent tokens at once from independent marginals: a real gap. On the
    100-step grid it is tight within Monte-Carlo error."""
    chain, x0, nll = markov
    c = MaskCorruption(V)
    oracle = MarkovOracle(chain, c)
    coarse = udm.likelihood(oracle, x0, "elbo_masked", corruption=c, time_type=Discrete(4), batch_size=4000)
    fine = udm.likelihood(oracle, x0, "elbo_masked", corruption=c, time_type=Discrete(100), batch_size=4000)
    (m4, se4), (m100, se100) = gap(coarse, nll), gap(fine, nll)
    assert m4 > 10 * se4 and abs(m100) < 3 * se100 and m4 > m100, (m4, se4, m100, se100)
    assert coarse.settings["steps"] == 4


def test_exact_count_bound_holds_off_the_l_step_grid_where_the_training_loss_falls_below(markov):
    """Issue 13, item 4: with exact_count on Discrete(100) (L = 8) the training loss weighted by tau'/tau, read as
    an ELBO, is about 0.06 nats/token *below* the NLL; elbo_masked scores the chain the grid defines (a uniform
    subset of k_t - k_s tokens revealed per step) and is a bound, here tight (each active step reveals one)."""
    chain, x0, nll = markov
    c = MaskCorruption(V, exact_count=True)
    oracle = MarkovOracle(chain, c)
    time = Discrete(100)

    class Exact(torch.nn.Module):
        def forward(self, x_t, enc):
            return oracle.logits(x_t, None).float()

    loss = udm.diffusion_loss(Exact(), c, time, x0, g(1)).per_sample.double() * 1.0 - nll / L  # per token
    z = float(loss.mean() / (loss.std() / math.sqrt(len(loss))))
    assert z < -6 and -0.09 < float(loss.mean()) < -0.03, (float(loss.mean()), z)
    r = udm.likelihood(oracle, x0, "elbo_masked", corruption=c, time_type=time, batch_size=4000)
    mean, se = gap(r, nll)
    assert abs(mean) < 3 * se, (mean, se)
    cont = udm.likelihood(oracle, x0, "elbo_masked", corruption=c, time_type=Continuous(), batch_size=4000)
    mean, se = gap(cont, nll)
    assert abs(mean) < 3 * se, (mean, se)  # continuous time: the L-step order-agnostic chain


def test_chain_weights_are_the_fraction_revealed():
    c = MaskCorruption(V, exact_count=True)
    w = chain_weights(c, Discrete(L).grid(L), L)  # one token per step: 1/k, k = L .. 1
    assert torch.allclose(w, 1 / torch.arange(L, 0, -1, dtype=torch.float64))
    w = chain_weights(c, Discrete(100).grid(100), L)
    assert int((w > 0).sum()) == L and float(w[-1]) == 0.0  # round(0.01 L) = 0: the last step reveals nothing
    ind = chain_weights(MaskCorruption(V), Discrete(4).grid(4), L)
    assert torch.allclose(ind, torch.tensor([0.25, 1 / 3, 0.5, 1.0], dtype=torch.float64))


# -------------------------------------------------------------------------------------------------- deletion
def _tiny_insertion(seed: int = 0):
    torch.manual_seed(seed)
    return udm.registry().create("model", "insertion", vocab_size=2, max_length=4, width=16, depth=1, heads=2)


def test_deletion_one_step_chain_is_the_corruptions_nll(reg):
    """K = 1: the chain inserts everything at once from the empty sequence, so its bound is Delete.nll at t = 1."""
    c, net = Delete(), _tiny_insertion()
    x0 = udm.Sequences.pad_list([[0, 1, 1], [1, 0], [0, 0, 1, 1]])
    time = Discrete(1)
    r = udm.likelihood(net, x0, "elbo_deletion", corruption=c, time_type=time)
    t = torch.ones(3, dtype=torch.float64)
    u = c.sample_noise(x0, g(0))
    x_t = c.forward(x0, u, t)
    with torch.no_grad():
        want = c.nll(net(x_t, time.encode(t)), x0, u, x_t, t).double()
    assert torch.allclose(r.per_example, want, rtol=1e-6)
    assert r.terms.diffusion == 0.0 and r.dims == pytest.approx(3.0)


class _CountBias(torch.nn.Module):
    """An insertion network whose count logits are shifted by ``bias (max_count + 1,)``: a model that is sure of
    the counts, so that thinning q_theta's count (or not) changes the bound by nats rather than hundredths."""

    def __init__(self, net: torch.nn.Module, bias: torch.Tensor):
        super().__init__()
        self.net, self.bias = net, bias

    def forward(self, x, enc):
        out = self.net(x, enc)
        return dataclasses.replace(out, count_logits=out.count_logits + self.bias.to(out.count_logits))


def test_deletion_elbo_is_the_exact_expectation_over_paths(reg):
    """Two steps (t = 1 -> 1/2 -> 0) on one sequence of 3 tokens: the ELBO is an average over the 8 sets of tokens
    kept at t = 1/2 (each with probability 1/8). Computed here path by path -- the first step's count law
    sum_C q_theta(C) Binomial(c; C, 1/2) and its inserted tokens, the second step's Delete.nll -- it must equal
    the estimator's mean within its standard error, and lie below log p(x_0) (Jensen). The model favours a count
    of 3 (the truth at t = 1), so P_theta(c) at t = 1/2 is mostly the binomial thinning of it."""
    c, net = Delete(), _CountBias(_tiny_insertion(1), torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0]))
    time = Discrete(2)
    tokens = [0, 1, 1]
    x0 = udm.Sequences.pad_list([tokens])
    half = torch.full((1,), 0.5, dtype=torch.float64)
    log_paths = []
    with torch.no_grad():
        empty = udm.Sequences(torch.zeros((1, 0), dtype=torch.long), torch.zeros(1, dtype=torch.long))
        out1 = net(empty, time.encode(torch.ones(1, dtype=torch.float64)))
        pi = out1.count_logits.double().softmax(-1)[0, 0]  # q_theta(C) for the one gap
        for keep in itertools.product([False, True], repeat=3):
            kept = [tok for tok, k in zip(tokens, keep) if k]
            m = len(kept)
            p_count = sum(float(pi[n]) * math.comb(n, m) * 0.5 ** n for n in range(m, len(pi)))
            log_p = math.log(p_count)
            if m:
                layout = udm.Sequences.pad_list([[-1] * m])
                tok = out1.token_logits(layout, torch.ones(1, m, dtype=torch.bool)).double().log_softmax(-1)
                log_p += float(tok[0, torch.arange(m), torch.tensor(kept)].sum())
            u = torch.tensor([[0.75 if k else 0.25 for k in keep]], dtype=torch.float64)  # kept at 1/2 iff u >= 1/2
            x_half = c.forward(x0, u, half)
            log_p -= float(c.nll(net(x_half, time.encode(half)), x0, u, x_half, half))
            log_paths.append(log_p - 3 * math.log(0.5))  # minus log q(path | x_0) = 3 log(1/2)
    elbo = sum(log_paths) / 8
    log_px = torch.logsumexp(torch.tensor(log_paths) + 3 * math.log(0.5), 0)
    many = udm.Sequences.pad_list([tokens] * 4000)
    r = udm.likelihood(net, many, "elbo_deletion", corruption=c, time_type=time, draws=1, batch_size=4000, seed=3)
    se = float(r.per_example.std() / math.sqrt(len(r.per_example)))
    # se ~ 0.05: an unthinned count law (1.4 nats) or a missing subset entropy (2.1 nats) is far outside 3 se
    assert abs(float(r.per_example.mean()) + elbo) < 3 * se and se < 0.1, (float(r.per_example.mean()), -elbo, se)
    assert -elbo > -float(log_px)


def test_deletion_step_with_rho_one_is_the_one_step_nll(reg):
    c, net = Delete(), _tiny_insertion(2)
    x0 = udm.Sequences.pad_list([[0, 1, 1, 0], [1], [0, 1]])
    time = Discrete(10)
    ctx = Context(c, time, udm.Denoiser(net, c, time))
    t, s = torch.full((3,), 0.7, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        got = step_nll(ctx, x0, t, s, g(5))
        u = c.sample_noise(x0, g(5))
        x_t = c.forward(x0, u, t)
        want = c.nll(net(x_t, time.encode(t)), x0, u, x_t, t).double()
    assert torch.allclose(got, want, rtol=1e-6)


def test_token_estimators_refuse_what_they_cannot_score(reg):
    with pytest.raises(udm.CapabilityError, match=r"likelihood estimator 'elbo_deletion': the corruption must be the "
                                                  r"delete corruption with independent deletion \(exact_count=False\); "
                                                  r"got 'delete'\. Estimators 'delete' supports: \(none\)\."):
        udm.likelihood(_tiny_insertion(), udm.Sequences.pad_list([[0, 1]]), "elbo_deletion",
                       corruption=Delete(exact_count=True), time_type=Discrete(4))
    with pytest.raises(udm.CapabilityError, match=r"likelihood estimator 'ode': the corruption must be linear-Gaussian "
                                                  r".*; got 'mask'\. Estimators 'mask' supports: elbo_masked\."):
        udm.likelihood(lambda x, t, gen: x, torch.zeros(2, 4, dtype=torch.long), "ode", corruption=MaskCorruption(3),
                       time_type=Continuous())
