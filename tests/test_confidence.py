"""The ``confidence`` sampler (MaskGIT order): most confident positions are unmasked first; with point
predictions it is the random order of ``invert`` (its marginal check runs in tests/test_mask.py); on the exact
Markov-chain oracle the calibrated default falls to the TV floor with steps and MaskGIT's stays biased."""

import pytest
import torch

import udm
from udm.plugins.confidence import confidence
from udm.plugins.mask import MaskCorruption
from udm.testing import MarkovChain, MarkovOracle, marginal_check


class Ramp:
    """A denoiser whose confidence grows with the position: logits favour token 0 by j at position j."""

    def predict(self, x_t, t, generator=None):
        B, L = x_t.shape
        logits = torch.zeros(B, L, 3, dtype=torch.float64)
        logits[..., 0] = torch.arange(L, dtype=torch.float64)
        return udm.Prediction(torch.zeros(B, L, dtype=torch.long), logits)

    def __call__(self, x_t, t, generator=None):
        return self.predict(x_t, t, generator).x0_hat


def test_unmasks_the_most_confident_positions_first():
    c = MaskCorruption(3, exact_count=True)
    x1 = c.sample_prior((2, 8), None)
    seen = []
    confidence(Ramp(), c, torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64), x1, choice_temperature=0,
               generator=torch.Generator().manual_seed(0), callback=lambda s: seen.append(s.x.clone()))
    # 4 stay masked at t = 0.5: the least confident positions 0..3; then 2 at t = 0.25
    assert (seen[0][:, :4] == 3).all() and (seen[0][:, 4:] == 0).all()
    assert (seen[1][:, :2] == 3).all() and (seen[1][:, 2:] == 0).all()
    assert (seen[2] == 0).all()


def test_gumbel_noise_randomises_the_order():
    c = MaskCorruption(3, exact_count=True)
    x = confidence(Ramp(), c, torch.tensor([1.0, 0.5], dtype=torch.float64), c.sample_prior((400, 8), None),
                   generator=torch.Generator().manual_seed(0), choice_temperature=50.0)
    masked = (x == 3).double().mean(0)
    assert float(masked[-1]) > 0.2  # the most confident position sometimes stays masked


def test_point_predictions_keep_the_marginals(reg):
    c = MaskCorruption(4)
    x0 = torch.tensor([[0, 1, 2, 3, 0, 1]]).expand(3000, 6).contiguous()
    res = marginal_check(c, x0, reg.get("sampler", "confidence"), [0.8, 0.5, 0.2])
    assert res.passed, res.detail


def test_errors_and_capabilities(reg):
    c = MaskCorruption(4)
    with pytest.raises(udm.ConfigError, match=r"sampler 'confidence': choice_temperature must be >= 0; got -1"):
        confidence(Ramp(), c, torch.tensor([1.0, 0.0]), c.sample_prior((1, 4), None), choice_temperature=-1)
    with pytest.raises(udm.ConfigError, match=r"sampler 'confidence': by must be one of max, drawn; got 'min'"):
        confidence(Ramp(), c, torch.tensor([1.0, 0.0]), c.sample_prior((1, 4), None), by="min")
    for name in ("gaussian", "replace"):
        other = reg.create("corruption", name, **({"vocab_size": 4} if name == "replace" else {}))
        with pytest.raises(udm.CapabilityError, match=r"sampler 'confidence'.*must offer masked_count"):
            udm.resolve_sampler("confidence", other, reg)
    assert reg.get("sampler", "maskgit").options == {"by": "drawn", "choice_temperature": 4.5, "anneal": True}
    assert reg.get("sampler", "confidence").options == {}


def test_drawn_confidence_order_is_mode_seeking():
    """With the exact Markov oracle, MaskGIT's greedy drawn-token order draws more likely sequences than the
    exact random-order sampler: mean log p(x) higher by more than 5 standard errors."""
    chain = MarkovChain.random(4, 6, seed=1)
    c = MaskCorruption(4, exact_count=True)
    time = udm.registry().create("time", "discrete", steps=6)
    lp = {}
    for sampler, options in (("confidence", {"by": "drawn", "choice_temperature": 0.0}), ("invert", {})):
        x = udm.sample(MarkovOracle(chain, c), c, time, shape=(4000, 6), sampler=sampler, steps=6,
                       generator=torch.Generator().manual_seed(0), **options)
        lp[sampler] = chain.log_prob(x)
    diff = lp["confidence"].mean() - lp["invert"].mean()
    se = (lp["confidence"].var() / 4000 + lp["invert"].var() / 4000).sqrt()
    assert diff > 5 * se, (float(diff), float(se))


# ------------------------------------------------------- the exact Markov-chain oracle (issue 18, item 7)
V, L, N = 6, 8, 6000
_TV: dict = {}


def _tv(name: str, steps: int, **options) -> float:
    """TV to the chain's law of N samples, exact-count masking, exact oracle (memoised across tests)."""
    key = (name, steps, tuple(sorted(options.items())))
    if key not in _TV:
        chain = MarkovChain.random(V, L, seed=0)
        c = MaskCorruption(V, exact_count=True)
        time = udm.registry().create("time", "discrete", steps=64)
        x = udm.sample(MarkovOracle(chain, c), c, time, shape=(N, L), sampler=name, steps=steps,
                       generator=torch.Generator().manual_seed(steps), **options)
        _TV[key] = chain.tv(x)
    return _TV[key]


@pytest.fixture(scope="module")
def floor():
    """Mean and std of the TV of N true draws (MarkovChain.random(6, 8): 1.7e6 states, so the floor is high)."""
    return MarkovChain.random(V, L, seed=0).tv_floor(N, seeds=5)


def test_calibrated_confidence_falls_to_the_floor_with_steps(floor):
    """Default ``confidence`` (max-probability score, Gumbel top-k at temperature 1): its order depends only on
    revealed tokens, so with one reveal per step (8 steps for 8 positions) it is exact; at 4 steps (2 reveals
    per step) it pays the parallel-decoding error, which is why the TV falls with steps."""
    mean, std = floor
    tv = {n: _tv("confidence", n) for n in (4, 8, 16)}
    print(f"calibrated confidence TV {tv}, floor {mean:.4f} +- {std:.4f}")
    assert tv[4] > tv[8] + 10 * std
    assert tv[8] < mean + 6 * std and tv[16] < mean + 6 * std


def test_drawn_confidence_is_biased_and_does_not_improve_with_steps(floor):
    """The old default (drawn-token score, greedy) and ``maskgit`` stay far above the floor at any number of
    steps with the exact denoiser: they select positions by the values they drew (mode-seeking)."""
    mean, std = floor
    greedy = {n: _tv("confidence", n, by="drawn", choice_temperature=0.0) for n in (4, 16)}
    maskgit = {n: _tv("maskgit", n) for n in (8, 16)}
    print(f"greedy drawn TV {greedy}; maskgit TV {maskgit}; floor {mean:.4f} +- {std:.4f}")
    assert greedy[16] > greedy[4] - 5 * std > mean + 50 * std
    assert min(maskgit.values()) > mean + 10 * std


def test_calibrated_matches_invert_from_one_reveal_per_step(floor):
    """From 8 steps (one reveal per step) the calibrated order and the exact random order agree within noise."""
    mean, std = floor
    assert abs(_tv("confidence", 8) - _tv("invert", 8)) < 6 * std
