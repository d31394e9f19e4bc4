"""The ``mask_pixels`` corruption (continuous masked diffusion, plugins/_pixel_mask.py) and the unet mask channel."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import CapabilityError, ConfigError
from udm.plugins.mask import PixelMaskCorruption
from udm.plugins.time import Continuous, Discrete
from udm.plugins.unet import UNet
from udm.samplers import invert, ode
from udm.testing import assert_conforms, check_corruption


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def full(v: float, n: int) -> torch.Tensor:
    return torch.full((n,), v, dtype=torch.float64)


@pytest.mark.parametrize("kwargs,match", [
    ({"fill": float("nan")}, r"corruption mask_pixels: fill must be a finite number; got nan\. Use a value outside"),
    ({"fill": "0"}, r"fill must be a finite number; got '0'"),
    ({"patch": 0}, r"corruption mask_pixels: patch must be an integer >= 1; got 0\. Use 1"),
    ({"schedule": "cosin"}, r"schedule must be one of linear, cosine; got 'cosin'.*cosine"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PixelMaskCorruption(**kwargs)


def test_shape_not_divisible_by_patch():
    with pytest.raises(ConfigError, match=r"spatial sizes divisible by patch=3; got shape \(2, 1, 8, 8\)\. Change patch"):
        PixelMaskCorruption(patch=3).sample_noise(torch.zeros(2, 1, 8, 8), g(0))


def test_registered_and_samplers_exclude_ode(reg):
    c = reg.create("corruption", "mask_pixels", fill=-2.0)
    assert isinstance(c, PixelMaskCorruption) and udm.capabilities(c) == {"noise_posterior", "refresh_noise"}
    offered = {s for s in reg.names("sampler") if reg.get("sampler", s).supports(c)}
    assert {"invert", "ddim", "refresh", "renoise", "naive"} <= offered
    assert not offered & {"ode", "euler", "heun", "rk4", "residual", "cold"}
    with pytest.raises(CapabilityError, match=r"sampler rule 'ode': corruption 'mask_pixels' must offer .*lacks vector_space"):
        ode(None, c, [1.0, 0.0], torch.zeros(1, 1, 2, 2))


def test_ode_would_be_wrong_without_the_opt_out(reg):
    """Negative control: with vector_space forced on, the ODE never unmasks (d/dt F = 0), so its marginal fails."""
    class Leaky(PixelMaskCorruption):
        vector_space = True
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    report = check_corruption(Leaky(fill=-2.0), x0, registry=reg, samplers=["euler"], n=1000, fine_steps=10)
    results = [r for r in report.results if r.name == "marginal[euler]"]
    assert len(results) == 4 and not any(r.passed for r in results), [r.detail for r in results]


@pytest.mark.parametrize("exact", [False, True])
def test_masking_rate_and_patch_structure(exact):
    c = PixelMaskCorruption(fill=-2.0, patch=2, exact_count=exact)
    n, tau = 4000, 0.3
    x0 = torch.rand(n, 3, 8, 8)
    x_t = c.forward(x0, c.sample_noise(x0, g(1)), full(tau, n))
    m = c.masked(x_t)
    assert torch.equal(m, x_t == -2.0) and torch.equal(torch.where(m, x0, x_t), x0)  # visible pixels untouched
    # one decision per 2x2 patch, shared by the channels
    patches = m.view(n, 3, 4, 2, 4, 2)
    assert (patches == patches[:, :1, :, :1, :, :1]).all()
    per_image = m[:, 0, ::2, ::2].double().mean((1, 2))  # 16 patches per image
    if exact:
        assert (per_image * 16 == round(tau * 16)).all()
    else:  # Binomial(16 n, tau) overall: 5 standard errors
        assert abs(float(per_image.mean()) - tau) < 5 * math.sqrt(tau * (1 - tau) / (16 * n))


def test_flat_vectors_and_prior():
    c = PixelMaskCorruption(fill=9.0)
    x0 = torch.randn(5, 7)
    assert c.sample_noise(x0, g(0)).shape == (5, 7)
    assert torch.equal(c.forward(x0, c.sample_noise(x0, g(0)), full(1.0, 5)), torch.full((5, 7), 9.0))
    assert torch.equal(c.forward(x0, c.sample_noise(x0, g(0)), full(0.0, 5)), x0)
    assert torch.equal(c.sample_prior((2, 1, 4, 4), g(0)), torch.full((2, 1, 4, 4), 9.0))


@pytest.mark.parametrize("exact", [False, True])
def test_noise_posterior_reproduces_x_t_and_is_the_posterior(exact):
    """F_t(x0, u_hat) = x_t exactly, also with true pixels equal to fill; with them u is exactly the
    prior's share: for independent masking their u is U[0, 1] (mean 1/2), not conditioned on the fill."""
    c = PixelMaskCorruption(fill=0.0, exact_count=exact)
    n, t = 3000, full(0.6, 3000)
    x0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(n, 1, 1, 1)
    x0[:, 0, 0, 0] = 0.0  # an ambiguous pixel (true value = fill)
    x_t = c.forward(x0, c.sample_noise(x0, g(2)), t)
    u = c.noise_posterior(x_t, x0, t, g(3))
    assert torch.equal(c.forward(x0, u, t), x_t)
    flat = u.flatten(1)
    if exact:  # P(ambiguous pixel among the k = 10 lowest of 16) = 10/16; the other 15 pixels hold the rest
        p, chosen = 10 / 16, flat.argsort(1).argsort(1)[:, 0] < 10
    else:  # P(u < tau) = tau, and u itself is U[0, 1]
        p, chosen = 0.6, flat[:, 0] < 0.6
        assert abs(float(flat[:, 0].mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(chosen.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("exact", [False, True])
def test_refresh_noise_keeps_uniform_law(exact):
    c = PixelMaskCorruption(exact_count=exact)
    u = c.sample_noise(torch.zeros(20000, 1, 2, 2), g(4))
    v = c.refresh_noise(u, 0.5, g(5))
    assert v.shape == u.shape and abs(float((v == u).double().mean()) - 0.5) < 0.02
    assert abs(float(v.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / v.numel())


@pytest.mark.parametrize("time_type,exact,patch", [(Discrete(steps=20), False, 1), (Continuous(), True, 2),
                                                   (Continuous(), False, 1)])
def test_conformance(reg, time_type, exact, patch):
    c = PixelMaskCorruption(fill=-2.0, patch=patch, exact_count=exact, schedule="cosine" if exact else "linear")
    x0 = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    report = assert_conforms(c, x0, time_type=time_type, registry=reg, n=2000)
    names = {r.name for r in report.results}
    assert {"marginal[invert]", "marginal[refresh]", "marginal[renoise]", "noise_posterior_explains_x_t"} <= names


def test_to_x0_keeps_visible_pixels_and_loss_mask():
    c = PixelMaskCorruption(fill=-2.0)
    x0 = torch.rand(8, 1, 8, 8)
    t = full(0.5, 8)
    x_t = c.forward(x0, c.sample_noise(x0, g(6)), t)
    out = torch.full_like(x0, 7.0)
    x0_hat = c.to_x0(out, x_t, t)
    m = c.masked(x_t)
    assert torch.equal(x0_hat[~m], x0[~m]) and (x0_hat[m] == 7.0).all()
    assert torch.equal(c.loss_mask(x0, x_t), m)
    loss = udm.Gaussian().loss(out, x0, c.loss_mask(x0, x_t))  # squared error on masked pixels only
    assert torch.allclose(loss, ((7.0 - x0) ** 2 * m).flatten(1).mean(1))


def test_unet_mask_channel():
    net = UNet(data_shape=(1, 8, 8), channels=8, channel_mult=(1,), attention=False, mask_fill=-2.0)
    assert net.inp.in_channels == 2
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, :4] = -2.0
    seen = {}
    net.inp.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    assert net(x, torch.zeros(2)).shape == (2, 1, 8, 8)
    assert torch.equal(seen["x"][:, 1], (x[:, 0] == -2.0).float())


@pytest.mark.slow  # 300 U-Net training steps: 10-20 s on two cores (CI runs -m slow)
def test_training_learns_masked_pixels_and_inpaints(reg):
    """A few hundred steps on 8x8 digits: masked-pixel MSE well below the per-pixel-mean baseline."""
    torch.manual_seed(0)
    data = reg.create("dataset", "digits", n=640)
    c = PixelMaskCorruption(fill=-2.0)
    time = Continuous()
    net = UNet(data_shape=(1, 8, 8), channels=8, channel_mult=(1, 2), attention=False, mask_fill=-2.0)
    res = udm.train(net, c, time, data[:512], steps=300, batch_size=32, lr=2e-3, ema=0.0, seed=0)
    test = data[512:]
    n = len(test)
    t = full(0.5, n)
    x_t = c.forward(test, c.sample_noise(test, g(7)), t)
    m = c.masked(x_t)
    with torch.no_grad():
        x0_hat = c.to_x0(res.model(x_t, time.encode(t)), x_t, t)
    mse = float((x0_hat - test)[m].square().mean())
    mean_img = data[:512].mean(0, keepdim=True).expand_as(test)
    base_mean = float((mean_img - test)[m].square().mean())
    base_fill0 = float(test[m].square().mean())  # predict 0 (mid-gray)
    print(f"masked MSE {mse:.4f} vs per-pixel mean {base_mean:.4f}, zero {base_fill0:.4f}")
    assert mse < 0.7 * base_mean < base_fill0
    assert torch.equal(x0_hat[~m], test[~m])  # inpainting keeps the visible pixels exactly
    # the ancestral sampler started from a half-masked image keeps its visible pixels too
    den = udm.Denoiser(res.model, c, time)
    out = invert(den, c, time.grid(8)[4:], x_t, generator=g(8))
    assert torch.equal(out[~m], test[~m]) and not (out == -2.0).any()
