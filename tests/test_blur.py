"""The ``blur`` corruption: exact heat dissipation through the DCT, the fitted prior, conformance."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.plugins.blur import BlurCorruption, dct_matrix, heat_decay
from udm.testing import assert_conforms
from udm.testing import default_features
from udm.plugins.time import Continuous, Discrete


def _images(n=4, c=2, h=6, w=5, seed=0, dtype=torch.float64):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _neumann_laplacian(n: int) -> torch.Tensor:
    """1-D second-difference matrix with reflecting boundaries (ghost cell = edge cell)."""
    lap = -2 * torch.eye(n, dtype=torch.float64) + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1) \
        + torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    lap[0, 0] = lap[-1, -1] = -1
    return lap


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16])
def test_dct_is_orthonormal(n):
    v = dct_matrix(n)
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(v @ v.T, eye, atol=1e-13, rtol=0)
    torch.testing.assert_close(v.T @ v, eye, atol=1e-13, rtol=0)


def test_dct_matches_the_dct2_definition():
    # DCT-II, orthonormal: X_k = c_k sum_i x_i cos(pi (i + 1/2) k / n), checked by an explicit double loop
    x = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.tensor([(math.sqrt(1 / 7) if k == 0 else math.sqrt(2 / 7))
                         * sum(float(x[i]) * math.cos(math.pi * (i + 0.5) * k / 7) for i in range(7))
                         for k in range(7)], dtype=torch.float64)
    torch.testing.assert_close(dct_matrix(7) @ x, want, atol=1e-12, rtol=0)


def test_grid_heat_equals_matrix_exponential_and_explicit_steps():
    x = _images(2, 1, 6, 5)
    tau = torch.tensor([0.7, 2.5], dtype=torch.float64)
    got = heat_decay(x, tau, "grid")
    # oracle 1: expm(tau L) with the 2-D Neumann finite-difference Laplacian L = L_H (+) L_W
    lap = torch.kron(_neumann_laplacian(6), torch.eye(5, dtype=torch.float64)) \
        + torch.kron(torch.eye(6, dtype=torch.float64), _neumann_laplacian(5))
    for b in range(2):
        want = torch.linalg.matrix_exp(float(tau[b]) * lap) @ x[b, 0].reshape(-1)
        torch.testing.assert_close(got[b, 0].reshape(-1), want, atol=1e-12, rtol=0)
    # oracle 2: many tiny explicit Euler steps of du/dtau = L u (first-order in dt: error ~ dt tau |L|^2)
    steps = 20000
    u = x[0, 0].reshape(-1).clone()
    step = torch.eye(30, dtype=torch.float64) + (float(tau[0]) / steps) * lap
    for _ in range(steps):
        u = step @ u
    torch.testing.assert_close(got[0, 0].reshape(-1), u, atol=2e-4, rtol=0)


def test_continuous_heat_equals_gaussian_convolution():
    # The cosine interpolant f(y) = sum_k X_k c_k cos(pi k (y + 1/2) / n) of an image row, extended evenly,
    # convolved with a Gaussian of std sigma_B = sqrt(2 tau) (quadrature), sampled at pixel centres.
    n, tau = 8, 1.3
    x = _images(1, 1, 1, n, seed=3)
    coef = dct_matrix(n) @ x[0, 0, 0]
    scale = torch.tensor([math.sqrt(1 / n)] + [math.sqrt(2 / n)] * (n - 1), dtype=torch.float64)
    freq = math.pi * torch.arange(n, dtype=torch.float64) / n
    f = lambda y: (torch.cos(freq[None] * (y[:, None] + 0.5)) * (coef * scale)[None]).sum(1)  # noqa: E731
    sb = math.sqrt(2 * tau)
    z = torch.linspace(-12 * sb, 12 * sb, 40001, dtype=torch.float64)
    kern = torch.exp(-0.5 * (z / sb) ** 2) / (sb * math.sqrt(2 * math.pi))
    dz = float(z[1] - z[0])
    want = torch.stack([(kern * f(i - z)).sum() * dz for i in torch.arange(n, dtype=torch.float64)])
    got = heat_decay(x, torch.tensor([tau], dtype=torch.float64), "continuous")[0, 0, 0]
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("blur", ["sin2", "log"])
@pytest.mark.parametrize("noise", ["linear", "vp"])
def test_t0_is_identity_and_t1_is_the_channel_mean(blur, noise):
    c = BlurCorruption(blur=blur, noise=noise, sigma=0.0)
    x = _images(3, 2, 8, 8, dtype=torch.float32)
    torch.testing.assert_close(c.degrade(x, torch.zeros(3)), x, atol=1e-6, rtol=0)
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(c.degrade(x, torch.ones(3)), mean, atol=1.5e-3, rtol=0)
    tau = c.tau(torch.linspace(0, 1, 50), 8, 8)
    assert float(tau[0]) == 0.0 and bool((tau[1:] > tau[:-1]).all())  # strictly more blur over time


def test_forward_adds_scaled_noise_and_noise_posterior_inverts_it():
    c = BlurCorruption(noise="vp", sigma=0.8)
    x = _images(4, 1, 8, 8, dtype=torch.float32)
    t = torch.tensor([0.2, 0.5, 0.7, 1.0], dtype=torch.float64)
    eps = c.sample_noise(x, torch.Generator().manual_seed(0))
    s = 0.8 * torch.sin(0.5 * math.pi * t)
    alpha = (1 - s**2).sqrt()
    want = alpha.float()[:, None, None, None] * heat_decay(x, c.tau(t, 8, 8)) + s.float()[:, None, None, None] * eps
    xt = c.forward(x, eps, t)
    torch.testing.assert_close(xt, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(c.noise_posterior(xt, x, t), eps, atol=1e-4, rtol=0)


def test_noise_posterior_draws_the_prior_where_sigma_is_zero():
    c = BlurCorruption(sigma=0.0)
    x = _images(2000, 1, 2, 2, dtype=torch.float32)
    t = torch.full((2000,), 0.5, dtype=torch.float64)
    eps = c.noise_posterior(c.forward(x, torch.zeros_like(x), t), x, t, torch.Generator().manual_seed(0))
    # a fresh N(0, 1) draw: mean within 5 standard errors of 0, variance within 5 standard errors of 1
    assert abs(float(eps.mean())) < 5 / math.sqrt(eps.numel())
    assert abs(float(eps.var()) - 1) < 5 * math.sqrt(2 / eps.numel())


def test_fit_prior_and_state_round_trip():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.2, -0.3]]) + torch.randn(5000, 2, generator=g) @ torch.tensor([[0.3, 0.1], [0.0, 0.2]])
    data = means[:, :, None, None] + 0.01 * torch.randn(5000, 2, 4, 4, generator=g)
    c = BlurCorruption(sigma=0.05)
    c.fit(data)
    state = c.state_dict()
    fresh = BlurCorruption(sigma=0.05)
    fresh.load_state_dict({k: v.clone() for k, v in state.items()})
    p1 = c.sample_prior((4000, 2, 4, 4), torch.Generator().manual_seed(5))
    p2 = fresh.sample_prior((4000, 2, 4, 4), torch.Generator().manual_seed(5))
    torch.testing.assert_close(p1, p2, atol=0, rtol=0)
    # the prior's channel means follow N(mu, Sigma) of the data's channel means (+ sigma_1^2 / 16 noise)
    m = p1.double().mean(dim=(2, 3))
    want_cov = torch.cov(data.double().mean(dim=(2, 3)).T) + 0.05**2 / 16 * torch.eye(2, dtype=torch.float64)
    se = 5 / math.sqrt(4000)
    torch.testing.assert_close(m.mean(0), state["channel_mean"], atol=se * 0.4, rtol=0)
    torch.testing.assert_close(torch.cov(m.T), want_cov, atol=se * 0.15, rtol=0)
    # and the pixels around the mean carry the sigma_1 noise
    resid = p1.double() - p1.double().mean(dim=(2, 3), keepdim=True)
    assert abs(float(resid.var() * 16 / 15) - 0.05**2) < 0.05**2 * 5 * math.sqrt(2 / resid.numel())


def test_fit_stats_survive_a_checkpoint(tmp_path):
    # udm.train fits the statistics; the checkpoint carries them next to the weights
    from udm.checkpoint import load_checkpoint, save_checkpoint
    from udm.plugins.time import Continuous

    data = _images(12, 3, 4, 4, dtype=torch.float32)
    net = udm.registry().create("model", "unet", data_shape=[3, 4, 4], channels=8, channel_mult=[1])
    c = BlurCorruption()
    result = udm.train(net, c, Continuous(), data, steps=1, batch_size=4, ema=0)
    trainer = udm.Trainer(result.model, c, Continuous(), ema=0)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ckpt", trainer, corruption=c))
    other = BlurCorruption()
    other.load_state_dict(ckpt.corruption)
    torch.testing.assert_close(ckpt.corruption["channel_mean"], data.double().mean(dim=(0, 2, 3)))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    torch.testing.assert_close(other.sample_prior((3, 3, 4, 4), g()), c.sample_prior((3, 3, 4, 4), g()),
                               atol=0, rtol=0)


def test_errors():
    with pytest.raises(ConfigError, match=r"corruption blur: sample_prior needs fitted statistics; call fit\(data\)"):
        BlurCorruption().sample_prior((2, 1, 8, 8), None)
    with pytest.raises(ConfigError, match=r"corruption blur: blur must be one of sin2, log; got 'sin'"):
        BlurCorruption(blur="sin")
    with pytest.raises(ConfigError, match=r"corruption blur: sigma must be \[0, 1\] for noise='vp'; got 2"):
        BlurCorruption(noise="vp", sigma=2)
    with pytest.raises(ConfigError, match=r"corruption blur: family must be one of gaussian, laplace; got 'l1'"):
        BlurCorruption(family="l1")
    with pytest.raises(ConfigError, match=r"corruption blur: blur_max must be > 0"):
        BlurCorruption(blur_max=0)
    with pytest.raises(ConfigError, match=r"corruption blur: data must be images \(channels, height, width\) per "
                                          r"sample; got per-sample shape \(64,\)"):
        BlurCorruption().forward(torch.zeros(3, 64), torch.zeros(3, 64), torch.zeros(3))
    c = BlurCorruption()
    with pytest.raises(ConfigError, match=r"corruption blur: fit needs at least 2 images; got 1"):
        c.fit(torch.zeros(1, 1, 4, 4))
    c.fit(torch.zeros(3, 1, 4, 4))
    with pytest.raises(ConfigError, match=r"corruption blur: prior shape must be \(n, 1, H, W\)"):
        c.sample_prior((2, 3, 4, 4), None)


def test_registered_with_its_capabilities():
    reg = udm.registry()
    c = reg.create("corruption", "blur", sigma=0.1, family="laplace")
    assert c.family == "laplace"
    names = udm.supported_samplers(c)
    assert {"renoise", "invert", "refresh", "residual", "cold", "naive"} <= set(names)
    # blur is linear-Gaussian in the DCT basis: the per-frequency DDPM posterior exists
    assert {"ddpm", "posterior", "heun"} <= set(names)


def _one_digit_like(seed=0):
    return _images(1, 1, 8, 8, seed=seed, dtype=torch.float32)


@pytest.mark.parametrize("time_type", [Discrete(100), Continuous()], ids=["discrete", "continuous"])
@pytest.mark.parametrize("noise,sigma", [("linear", 0.2), ("vp", 1.0)])
def test_conformance_with_noise(time_type, noise, sigma):
    c = BlurCorruption(noise=noise, sigma=sigma)
    x0 = _one_digit_like()
    c.fit(_images(20, 1, 8, 8, dtype=torch.float32))
    report = assert_conforms(c, x0, time_type=time_type, n=2000, samplers=["renoise", "invert", "refresh", "residual"])
    assert len([r for r in report.results if r.name.startswith("marginal")]) == 16
    assert len([r for r in report.results if r.name.startswith("joint")]) == 12


@pytest.mark.parametrize("noise,sigma", [("linear", 0.2), ("vp", 1.0)])
def test_conformance_of_the_ode_sampler(noise, sigma):
    """heun on one strided step where the blur path is smooth: below t ~ 0.3 the high frequencies decay at
    rates up to lambda tau' ~ 1e3, and 50 heun steps from 0.95 to 0.05 miss the marginal (KS D = 0.097 vs
    0.083; 200 steps pass, at 40 s); the exact rules are checked on the default chains above."""
    c = BlurCorruption(noise=noise, sigma=sigma)
    c.fit(_images(20, 1, 8, 8, dtype=torch.float32))
    report = assert_conforms(c, _one_digit_like(), time_type=Continuous(), n=2000, fine_steps=50, samplers=["heun"],
                             chains=[[0.7, 0.3]])
    assert {r.name for r in report.results} >= {"marginal[heun]", "joint[heun]"}


def _rounded_features(x, x0, generator):
    # sigma = 0: p(x_s | x_0) is a point mass; compare features rounded to 1e-4 so that float32 rounding
    # of equal values (x_t + D_s - D_t versus D_s) cannot count as a different distribution
    f = default_features(x, x0, generator)
    return udm.testing.Features((f.values * 1e4).round(), f.names)


@pytest.mark.parametrize("time_type", [Discrete(100), Continuous()], ids=["discrete", "continuous"])
def test_conformance_deterministic_cold_blur(time_type):
    c = BlurCorruption(sigma=0.0, family="laplace")
    x0 = _one_digit_like(1)
    c.fit(_images(20, 1, 8, 8, dtype=torch.float32))
    # the prior replaces D_1(x_0) by the channel mean, exact to 1e-3 of each mode (module docstring): with
    # sigma = 0 both laws are point masses, so that 1e-3 shows at the 1e-4 resolution of these features
    assert_conforms(c, x0, time_type=time_type, n=200, features=_rounded_features,
                    samplers=["renoise", "invert", "refresh", "residual"],
                    skip={"prior": "sigma = 0: the 1e-3 approximation of D_1(x_0) by the channel mean shows"})
    # and directly: with the oracle x0_hat = x0 every rule lands on D_s(x0) exactly (to float32 rounding)
    reg = udm.registry()
    xt = c.forward(x0, torch.zeros_like(x0), torch.full((1,), 0.7, dtype=torch.float64))
    want = c.degrade(x0, torch.full((1,), 0.3, dtype=torch.float64))
    for name in ("renoise", "invert", "residual"):
        got = reg.get("sampler", name)(udm.testing.FixedDenoiser(x0), c, [0.7, 0.5, 0.3], xt,
                                       generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
