"""Conditioning a network on the noise level (udm.NoiseLevelTime, issue 18 item 8): the encoding is sigma_t or
the clipped log-SNR, everything else is the wrapped time type's, and a network conditioned on sigma samples
any variance-preserving schedule without knowing how time maps to noise."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.testing import GaussianMixture

MIX = GaussianMixture.ring()
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cosine(reg):
    return reg.create("corruption", "gaussian", schedule="cosine", prediction="x0")


def test_encodings_are_sigma_and_the_clipped_log_snr(reg, cosine):
    base = reg.create("time", "discrete", steps=1000)
    t = torch.tensor([1.0, 0.75, 0.3, 0.001, 0.0], dtype=F64)
    sch = cosine.schedule(t)
    sigma = udm.NoiseLevelTime(base, cosine, "sigma").encode(t)
    assert torch.equal(sigma, sch.sigma)
    lam = udm.NoiseLevelTime(base, cosine, scale=2.0).encode(t)
    want = 2 * (2 * (sch.alpha.log() - sch.sigma.log())).clamp(-20, 20)
    assert torch.equal(lam, want) and torch.isfinite(lam).all()
    assert lam[0] == -40 and lam[-1] == 40 and -40 < lam[1] < lam[2] < lam[3] < 40  # cosine: -inf / +inf clipped
    assert udm.NoiseLevelTime(base, cosine).encode(t.float()).dtype == torch.float32


def test_everything_but_the_encoding_is_the_wrapped_time_types(reg, cosine):
    for base in (reg.create("time", "discrete", steps=50), reg.create("time", "continuous")):
        time = udm.NoiseLevelTime(base, cosine)
        assert time.spacings == base.spacings
        assert torch.equal(time.grid(7, spacing="quadratic"), base.grid(7, spacing="quadratic"))
        assert torch.equal(time.sample_train(9, gen(0)), base.sample_train(9, gen(0)))
    time = udm.NoiseLevelTime(reg.create("time", "discrete", steps=50), cosine)
    assert time.steps == 50 and int(time.to_index(torch.tensor([0.5]))) == 25


class SigmaNet(torch.nn.Module):
    """The exact mixture denoiser for any variance-preserving schedule, given only sigma (alpha^2 = 1 - sigma^2)."""

    def forward(self, x, sigma):
        s = sigma.double()
        return MIX.posterior_mean(x, (1 - s * s).clamp_min(0).sqrt(), s)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "vp"])
def test_a_sigma_conditioned_network_samples_any_vp_schedule(reg, schedule):
    corr = reg.create("corruption", "gaussian", schedule=schedule, prediction="x0")
    base = reg.create("time", "continuous")
    kw = dict(shape=(200, 2), sampler="ddim", steps=15, dtype=F64)
    x = udm.sample(SigmaNet(), corr, udm.NoiseLevelTime(base, corr, "sigma"), generator=gen(0), **kw)
    ref = udm.sample(MIX.denoiser(corr), corr, base, generator=gen(0), **kw)
    assert torch.allclose(x, ref, atol=1e-9)


def test_training_feeds_the_network_the_same_encoding(reg, cosine):
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, enc):
            seen.append(enc)
            return self.lin(x)

    time = udm.NoiseLevelTime(reg.create("time", "discrete", steps=100), cosine)
    out = udm.diffusion_loss(Recorder(), cosine, time, MIX.sample(64, gen(0)), gen(1))
    sch = cosine.schedule(out.t)
    want = (2 * (sch.alpha.log() - sch.sigma.log())).clamp(-20, 20)
    assert torch.allclose(seen[0].double(), want)
    assert math.isfinite(float(out.loss.detach()))


def test_errors(reg, cosine):
    base = reg.create("time", "discrete", steps=10)
    with pytest.raises(udm.ConfigError, match=r"NoiseLevelTime: encoding must be one of sigma, log_snr; got 'logsnr'\. "
                                              r"Did you mean 'log_snr'\?"):
        udm.NoiseLevelTime(base, cosine, "logsnr")
    with pytest.raises(udm.CapabilityError, match=r"NoiseLevelTime: the corruption must offer an affine schedule\(t\) "
                                                  r".*; got 'mask', which has none\."):
        udm.NoiseLevelTime(base, reg.create("corruption", "mask", vocab_size=4))
    with pytest.raises(udm.ConfigError, match=r"NoiseLevelTime: clip and scale must be > 0; got clip=0, scale=1\.0\."):
        udm.NoiseLevelTime(base, cosine, clip=0)
