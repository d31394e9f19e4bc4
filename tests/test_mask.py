"""The ``mask`` corruption: forward law, exact noise posterior, conformance, the MDLM ELBO with an exact
denoiser, and the Markov-chain oracle test (TV to the true law falls with steps; at one token per step it is
within the noise floor of an equally large true sample)."""

import math

import pytest
import torch

import udm
from udm.plugins.mask import MaskCorruption
from udm.plugins.time import Continuous, Discrete
from udm.samplers import invert
from udm.testing import MarkovChain, MarkovOracle, assert_conforms, ks_two_sample


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_errors():
    with pytest.raises(udm.ConfigError, match=r"corruption mask: vocab_size must be an integer >= 2; got 1\."):
        MaskCorruption(1)
    with pytest.raises(udm.ConfigError, match=r"corruption mask: schedule must be one of linear, cosine; got 'cosin'\..*cosine"):
        MaskCorruption(4, schedule="cosin")
    with pytest.raises(udm.ConfigError, match=r"corruption mask: loss must be one of elbo, ce; got 'mse'\."):
        MaskCorruption(4, loss="mse")


def test_registered(reg):
    c = reg.create("corruption", "mask", vocab_size=5, schedule="cosine")
    assert c.mask_id == 5 and c.family == "categorical"
    assert {"noise_posterior", "refresh_noise", "masked_count"} <= udm.capabilities(c)
    assert {"invert", "refresh", "confidence", "maskgit"} <= set(udm.supported_samplers(c, reg))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_tau(schedule):
    c = MaskCorruption(4, schedule=schedule)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    want = t if schedule == "linear" else 1 - torch.cos(math.pi * t / 2)
    assert torch.allclose(c.tau(t), want)
    # tau'/tau is the weight: compare with a finite difference of log tau
    h = 1e-6
    fd = (c.tau(t[1:2] + h).log() - c.tau(t[1:2] - h).log()) / (2 * h)
    assert torch.allclose(c.loss_weight(t[1:2]), fd, rtol=1e-6)


def test_forward_independent_masks_with_probability_tau():
    c = MaskCorruption(4, schedule="cosine")
    x0 = torch.randint(0, 4, (20000, 6), generator=g(0))
    t = torch.full((20000,), 0.4, dtype=torch.float64)
    x_t = c.forward(x0, c.sample_noise(x0, g(1)), t)
    masked = x_t == 4
    assert torch.equal(x_t[~masked], x0[~masked])
    tau = float(c.tau(t[:1]))
    se = math.sqrt(tau * (1 - tau) / 20000)
    assert ((masked.double().mean(0) - tau).abs() < 5 * se).all()


def test_forward_exact_count_and_endpoints():
    c = MaskCorruption(4, exact_count=True)
    x0 = torch.randint(0, 4, (500, 10), generator=g(0))
    u = c.sample_noise(x0, g(1))
    t = torch.rand(500, generator=g(2), dtype=torch.float64)
    assert torch.equal((c.forward(x0, u, t) == 4).sum(1), torch.round(t * 10).long())
    assert torch.equal(c.forward(x0, u, torch.zeros(500, dtype=torch.float64)), x0)
    assert (c.forward(x0, u, torch.ones(500, dtype=torch.float64)) == 4).all()
    assert (c.sample_prior((3, 10), g(0)) == 4).all()


@pytest.mark.parametrize("exact", [False, True])
def test_noise_posterior_is_exact(exact):
    """(x_t, u_hat) must have the law of (x_t, u): u_hat explains x_t and is marginally U[0, 1]."""
    c = MaskCorruption(5, exact_count=exact)
    x0 = torch.randint(0, 5, (4000, 8), generator=g(0))
    t = torch.full((4000,), 0.55, dtype=torch.float64)
    x_t = c.forward(x0, c.sample_noise(x0, g(1)), t)
    u = c.noise_posterior(x_t, x0, t, g(2))
    assert torch.equal(c.forward(x0, u, t), x_t)
    assert ks_two_sample(u.flatten()[:20000], torch.rand(20000, generator=g(3), dtype=torch.float64)).passed
    if exact:  # the rank of a masked position among masked ones is uniform
        ranks = u.argsort(1).argsort(1)[x_t == 5].double()
        assert abs(float(ranks.mean()) - (round(0.55 * 8) - 1) / 2) < 0.05


def test_refresh_noise_is_q_invariant():
    c = MaskCorruption(4)
    u = torch.rand(5000, 4, generator=g(0), dtype=torch.float64)
    assert torch.equal(c.refresh_noise(u, 0.0, g(1)), u)
    r = c.refresh_noise(u, 0.3, g(1))
    assert ks_two_sample(r.flatten(), torch.rand(20000, generator=g(2), dtype=torch.float64)).passed
    changed = (r != u).double().mean()
    assert abs(float(changed) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 20000)


def test_masked_count():
    x_t = torch.full((20000, 10), 4)
    t, s = torch.full((20000,), 0.8, dtype=torch.float64), torch.full((20000,), 0.5, dtype=torch.float64)
    k = MaskCorruption(4).masked_count(x_t, t, s, g(0)).double()
    p = 0.5 / 0.8
    assert abs(float(k.mean()) - 10 * p) < 5 * math.sqrt(10 * p * (1 - p) / 20000)
    assert (MaskCorruption(4, exact_count=True).masked_count(x_t, t, s) == 5).all()


def test_to_x0_keeps_visible_tokens():
    c = MaskCorruption(3)
    x_t = torch.tensor([[0, 3, 2, 3]])
    logits = torch.tensor([[[0.0, 9.0, 0.0]] * 4])  # the network insists on token 1 everywhere
    x0 = udm.Categorical().point(c.to_x0(logits, x_t, torch.ones(1)), g(0))
    assert x0.tolist() == [[0, 1, 2, 1]]
    assert torch.equal(c.loss_mask(None, x_t), x_t == 3)


@pytest.mark.parametrize("exact,schedule", [(False, "linear"), (True, "linear"), (False, "cosine")])
def test_conformance(reg, exact, schedule):
    c = MaskCorruption(4, schedule=schedule, exact_count=exact)
    x0 = torch.tensor([[0, 1, 2, 3, 3, 2, 1, 0]])
    report = assert_conforms(c, x0, registry=reg, n=3000, samplers="all")
    names = {r.name for r in report.results}
    assert {"marginal[invert]", "marginal[refresh]", "marginal[confidence]", "marginal[maskgit]", "joint[invert]",
            "joint[refresh]", "prior", "noise_posterior_law", "refresh_noise_preserves_q"} <= names


@pytest.mark.parametrize("exact", [False, True])
def test_elbo_is_tight_with_the_exact_denoiser(exact):
    """MDLM: E_{t,u}[tau'/tau * (1/L) sum_masked -log p(x_0,l | x_t)] = -log p(x_0) / L for the exact posterior
    (independent masking, t ~ U(0, 1)); with exact_count on the grid t = n/L it is the order-agnostic ARM
    identity. Checked per sample through ``udm.diffusion_loss`` within 4 standard errors; plain CE must miss."""
    V, L, N = 4, 6, 20000
    chain = MarkovChain.random(V, L, seed=0)
    time = Discrete(steps=L) if exact else Continuous(t_min=0.0)
    x0 = chain.sample(N, g(0))
    target = -chain.log_prob(x0) / L
    for loss in ("elbo", "ce"):
        c = MaskCorruption(V, exact_count=exact, loss=loss)
        oracle = MarkovOracle(chain, c)

        class Exact(torch.nn.Module):
            def forward(self, x_t, enc):
                return oracle.logits(x_t, None).float()

        d = udm.diffusion_loss(Exact(), c, time, x0, g(1)).per_sample.double() - target
        z = float(d.mean() / (d.std() / math.sqrt(N)))
        if loss == "elbo":
            assert abs(z) < 4, z
        else:
            assert abs(z) > 8, z


@pytest.fixture(scope="module")
def markov():
    chain = MarkovChain.random(6, 8, sharpness=2.0, seed=0)
    n = 20000
    mean, std = chain.tv_floor(n, seeds=5)
    return chain, n, mean + 3 * std


def _tv(chain, c, n, steps, seed=0):
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    x = invert(MarkovOracle(chain, c), c, times, c.sample_prior((n, chain.length), g(seed)), generator=g(seed))
    return chain.tv(x)


def test_tv_falls_with_steps_and_reaches_the_floor(markov):
    """Exact-count masking, per-position posterior marginals (as a NAR network): at one token per step
    (steps = L) the sampler is exact, so TV is within the floor of a true sample of the same size."""
    chain, n, floor = markov
    c = MaskCorruption(6, exact_count=True)
    tvs = [_tv(chain, c, n, s) for s in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(tvs, tvs[1:])), tvs
    assert tvs[0] > floor + 0.3, (tvs, floor)
    assert tvs[-1] <= floor, (tvs, floor)


def test_tv_falls_with_steps_independent_masking(markov):
    chain, n, floor = markov
    c = MaskCorruption(6)
    tvs = [_tv(chain, c, n, s) for s in (1, 4, 16)]
    assert all(a > b for a, b in zip(tvs, tvs[1:])), tvs
    assert tvs[-1] < floor + 0.1, (tvs, floor)


def test_exact_count_invert_reaches_the_floor_with_8_model_calls_not_64(markov):
    """Issue 18, item 7: on a 64-step grid only 8 steps reveal a token (round(8 t) changes 8 times); the others
    change nothing, so they reuse the prediction (q(x_0 | x_t) does not depend on t), and the state after the
    last reveal has nothing masked left: 8 model calls, and the law is still exact."""
    chain, n, floor = markov
    c = MaskCorruption(6, exact_count=True)
    times = torch.linspace(1, 0, 65, dtype=torch.float64)
    steps = []
    x = invert(MarkovOracle(chain, c), c, times, c.sample_prior((n, chain.length), g(0)), generator=g(0),
               callback=steps.append)
    assert [s.nfe for s in steps][-1] == 8 and steps[-1].reused == 56
    assert sum(a.nfe < b.nfe for a, b in zip(steps, steps[1:])) == 7  # a call follows each of the 7 first reveals
    assert chain.tv(x) <= floor, (chain.tv(x), floor)
