"""The ``confidence`` sampler (MaskGIT order): most confident positions are unmasked first; with point
predictions it is the random order of ``invert`` (its marginal check runs in tests/test_mask.py)."""

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
    confidence(Ramp(), c, torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64), x1,
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
    for name in ("gaussian", "replace"):
        other = reg.create("corruption", name, **({"vocab_size": 4} if name == "replace" else {}))
        with pytest.raises(udm.CapabilityError, match=r"sampler 'confidence'.*must offer masked_count"):
            udm.resolve_sampler("confidence", other, reg)
    assert reg.get("sampler", "maskgit").options == {"choice_temperature": 4.5}


def test_confidence_order_is_mode_seeking():
    """With the exact Markov oracle, confidence order (greedy) draws more likely sequences than the exact
    random-order sampler: mean log p(x) higher by more than 5 standard errors."""
    chain = MarkovChain.random(4, 6, seed=1)
    c = MaskCorruption(4, exact_count=True)
    time = udm.registry().create("time", "discrete", steps=6)
    lp = {}
    for sampler in ("confidence", "invert"):
        x = udm.sample(MarkovOracle(chain, c), c, time, shape=(4000, 6), sampler=sampler, steps=6,
                       generator=torch.Generator().manual_seed(0))
        lp[sampler] = chain.log_prob(x)
    diff = lp["confidence"].mean() - lp["invert"].mean()
    se = (lp["confidence"].var() / 4000 + lp["invert"].var() / 4000).sqrt()
    assert diff > 5 * se, (float(diff), float(se))
