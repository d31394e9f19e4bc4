"""Batch-independent noise (udm.PerSampleGenerator): sample j draws from its own stream, seeded from (seed, j), so
samples 0..99 drawn in batches of 1, 7 and 100 are bit-identical on the CPU, for Gaussian and masked sampling,
with and without a corrector. Draws that would tie the samples together are refused, and the default path (a
plain torch.Generator) is untouched.
"""

from __future__ import annotations

import pytest
import torch

import udm
from udm.samplers import PerSampleGenerator, Sampling, per_sample_draws
from udm.testing import GaussianMixture, MarkovChain, MarkovOracle

MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.2)


class RowByRow(MarkovOracle):
    """The Markov oracle computed one row at a time: its batched forward-backward rounds differently with the
    batch size (1e-15), and bit-identity needs a model whose rows do not depend on the batch."""

    def logits(self, x_t, t):
        return torch.cat([super(RowByRow, self).logits(x_t[i:i + 1], t) for i in range(len(x_t))])


def in_batches(size: int, sample) -> torch.Tensor:
    """Samples 0..99 drawn ``size`` at a time, each batch with the streams of its own sample indices."""
    return torch.cat([sample(range(start, min(100, start + size))) for start in range(0, 100, size)])


@pytest.mark.parametrize("sampler, corrector", [("ddpm", {"name": "ald", "snr": 0.1}),
                                                ("euler_maruyama", {"name": "refresh", "amount": 0.5})])
def test_gaussian_samples_do_not_depend_on_the_batch_size(reg, sampler, corrector):
    corr = reg.create("corruption", "gaussian", schedule="linear")
    time = reg.create("time", "continuous")

    def sample(indices):
        return udm.sample(MIX.denoiser(corr), corr, time, shape=(len(indices), 2), sampler=sampler, steps=6,
                          generator=PerSampleGenerator(0, indices), corrector=corrector, registry=reg)

    one, seven, hundred = (in_batches(size, sample) for size in (1, 7, 100))
    assert torch.equal(one, seven) and torch.equal(one, hundred)
    other = udm.sample(MIX.denoiser(corr), corr, time, shape=(100, 2), sampler=sampler, steps=6, registry=reg,
                       generator=PerSampleGenerator(1, 100), corrector=corrector)
    assert not torch.equal(other, hundred)  # another seed, other samples
    assert len({tuple(r.tolist()) for r in hundred}) == 100  # every sample its own stream


def test_masked_samples_do_not_depend_on_the_batch_size(reg):
    """Categorical draws (multinomial over (B * L, V) rows) and uniforms, with ReMDM remasking; predictions are never
    skipped batch-wide (whether a call is skipped would depend on the other samples)."""
    sampler, corrector = "invert", {"name": "remask", "schedule": "confidence", "share": True}
    chain = MarkovChain.random(6, 8, seed=0)
    corr = reg.create("corruption", "mask", vocab_size=6)
    time = reg.create("time", "continuous")

    def sample(indices):
        return udm.sample(RowByRow(chain, corr), corr, time, shape=(len(indices), 8), sampler=sampler, steps=4,
                          generator=PerSampleGenerator(3, indices), corrector=corrector, registry=reg)

    one, seven, hundred = (in_batches(size, sample) for size in (1, 7, 100))
    assert torch.equal(one, seven) and torch.equal(one, hundred)


def test_a_plain_generator_takes_the_usual_path(reg):
    """Without a PerSampleGenerator nothing is intercepted: the same draws as torch itself makes."""
    corr = reg.create("corruption", "gaussian")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with per_sample_draws(g1):
        a = corr.sample_noise(torch.zeros(4, 3), g1)
    assert torch.equal(a, torch.randn((4, 3), generator=g2))


def test_streams_are_split_per_row():
    g = PerSampleGenerator(7, range(10, 13))
    with per_sample_draws(g):
        z = torch.randn((3, 5), generator=g, dtype=torch.float64)
        u = torch.rand(3, 2, generator=g)
        k = torch.randint(0, 9, (3, 4), generator=g)
        m = torch.multinomial(torch.ones(6, 4), 1, generator=g)  # 2 rows per sample
        e = torch.empty(3, 2).normal_(generator=g)
        b = torch.binomial(torch.full((3,), 5.0), torch.full((3,), 0.5), generator=g)
    for j, index in enumerate((10, 11, 12)):
        own = torch.Generator().manual_seed(udm.samplers.sample_seed(7, index))
        assert torch.equal(z[j], torch.randn((5,), generator=own, dtype=torch.float64))
        assert torch.equal(u[j], torch.rand(2, generator=own))
        assert torch.equal(k[j], torch.randint(0, 9, (4,), generator=own))
        assert torch.equal(m[2 * j:2 * j + 2], torch.multinomial(torch.ones(2, 4), 1, generator=own))
        assert torch.equal(e[j], torch.empty(2).normal_(generator=own))
        assert torch.equal(b[j:j + 1], torch.binomial(torch.full((1,), 5.0), torch.full((1,), 0.5), generator=own))


def test_draws_that_tie_samples_together_are_refused():
    g = PerSampleGenerator(0, 4)
    with per_sample_draws(g):
        with pytest.raises(udm.CapabilityError, match=r"per-sample noise: a draw must have the batch \(4\) as its first "
                                                      r"dimension; got randn of shape \(\)"):
            torch.randn((), generator=g)
        with pytest.raises(udm.CapabilityError, match=r"got rand of shape \(3, 4\)"):
            torch.rand(3, 4, generator=g)
        with pytest.raises(udm.CapabilityError, match=r"randperm must be one of the draws udm can split per sample"):
            torch.randperm(4, generator=g)


def test_misuse_is_a_clear_error(reg):
    corr = reg.create("corruption", "gaussian")
    time = reg.create("time", "continuous")
    with pytest.raises(udm.ConfigError, match=r"udm\.sample: generator must have one stream per sample \(shape\[0\] = "
                                              r"5\); got a udm\.PerSampleGenerator for 3 samples"):
        udm.sample(MIX.denoiser(corr), corr, time, shape=(5, 2), steps=2, generator=PerSampleGenerator(0, 3),
                   registry=reg)
    with pytest.raises(udm.CapabilityError, match=r"Sampling: a udm\.PerSampleGenerator must be used inside a "
                                                  r"sampler call"):
        Sampling(MIX.denoiser(corr), corr, time.grid(2), torch.zeros(3, 2), generator=PerSampleGenerator(0, 3))
    for bad, pattern in ((-1, r"seed must be an integer >= 0; got -1"), ("a", r"seed must be an integer >= 0")):
        with pytest.raises(udm.ConfigError, match=r"udm\.PerSampleGenerator: " + pattern):
            PerSampleGenerator(bad, 3)
    with pytest.raises(udm.ConfigError, match=r"indices must be a count >= 1 or non-empty sample indices >= 0; got 0"):
        PerSampleGenerator(0, 0)


def test_yaml_noise_per_sample_is_checked(reg):
    from _tiny import TINY
    from udm.config import parse_config, validate

    cfg = parse_config(TINY)
    cfg["sample"]["noise"] = "per_sample"
    assert validate(cfg, reg, "exp.yaml")["sample"]["noise"] == "per_sample"
    cfg["sample"]["noise"] = "per-sample"
    with pytest.raises(udm.ConfigError, match=r"sample\.noise: the value must be one of 'shared', 'per_sample'; got "
                                              r"'per-sample'"):
        validate(cfg, reg, "exp.yaml")
