"""The linear-Gaussian layer (udm.LinearGaussian): bases, per-coefficient derivations, blur and a
coloured-noise instance, and the closed-form posterior's capability gap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import udm
from udm.bases import DCT2, Haar2, Identity
from udm.plugins.blur import BlurCorruption, heat_frequencies
from udm.plugins.time import Continuous, Discrete
from udm.testing import FixedDenoiser, assert_conforms


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(n=6, c=2, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=gen(seed), dtype=torch.float64) * 2 - 1


# ------------------------------------------------------------------------------------------ bases
@pytest.mark.parametrize("basis", [Identity(), DCT2(), Haar2(1), Haar2(3)])
def test_bases_are_orthonormal(basis):
    x = images(3, 2, 8, 16)
    c = basis.forward(x)
    torch.testing.assert_close(basis.inverse(c), x, atol=1e-13, rtol=0)
    torch.testing.assert_close(c.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_levels_are_average_pooling(levels):
    """Keeping the Haar coefficients of level > j is average pooling over 2^j blocks, blown back up."""
    x, b = images(2, 1, 8, 16), Haar2(levels)
    lv = b.levels_map(8, 16)
    for j in range(levels + 1):
        pooled = x if j == 0 else F.interpolate(F.avg_pool2d(x, 2**j), scale_factor=2**j, mode="nearest")
        torch.testing.assert_close(b.inverse(b.forward(x) * (lv > j)), pooled, atol=1e-13, rtol=0)


def test_haar_rejects_indivisible_shapes():
    with pytest.raises(udm.ConfigError, match=r"basis haar2: the last two dims must be divisible by 2\^levels = 4"):
        Haar2(2).forward(torch.zeros(1, 1, 6, 8))


# ------------------------------------------------------------------- blur: per-frequency posterior
def blur_coefficients(c: BlurCorruption, t: float, h: int, w: int):
    """a_ij(t), s(t) written out by hand from the blur definitions (not through the layer)."""
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = c.noise_amplitudes(tt)
    tau = c.tau(tt, h, w)
    lam = heat_frequencies(h, w, c.laplacian)
    return float(alpha) * torch.exp(-lam * float(tau)), float(sigma)


@pytest.mark.parametrize("noise,sigma", [("linear", 0.3), ("vp", 1.0)])
def test_blur_posterior_is_the_per_frequency_ddpm_posterior(noise, sigma):
    """Ho et al. eq. 7 per DCT frequency: with a_ts = a_t/a_s, v_ts = s_t^2 - a_ts^2 s_s^2,
    x_s = DCT^-1[ a_ts s_s^2/s_t^2 X_t + a_s v_ts/s_t^2 X_0 + sqrt(v_ts s_s^2 / s_t^2) Z ]."""
    c = BlurCorruption(noise=noise, sigma=sigma)
    x0, xt = images(seed=1), images(seed=2)
    t, s = 0.7, 0.35
    h, w = x0.shape[-2:]
    at, st = blur_coefficients(c, t, h, w)
    as_, ss = blur_coefficients(c, s, h, w)
    a_ts = at / as_
    v_ts = st**2 - a_ts**2 * ss**2
    dct = DCT2()
    z = torch.randn(x0.shape, generator=gen(5), dtype=torch.float64)
    want = dct.inverse(a_ts * ss**2 / st**2 * dct.forward(xt) + as_ * v_ts / st**2 * dct.forward(x0)
                       + (v_ts * ss**2 / st**2).sqrt() * dct.forward(z))
    got = c.posterior(xt, x0, torch.full((6,), t, dtype=torch.float64), torch.full((6,), s, dtype=torch.float64),
                      gen(5))
    assert float((got - want).abs().max()) < 1e-10


def test_blur_gains_ddpm_posterior_and_every_target():
    reg = udm.registry()
    names = udm.supported_samplers(BlurCorruption(sigma=0.1), reg)
    for name in ("ddpm", "posterior", "ddim", "heun", "cold"):
        assert name in names
    x0 = images(seed=3)
    for prediction in ("x0", "v"):  # eps, score and flow divide by a_ij -> 0 (refused below)
        c = BlurCorruption(noise="vp", sigma=0.5, prediction=prediction)
        t = torch.rand(6, generator=gen(4), dtype=torch.float64) * 0.9 + 0.05
        eps = torch.randn(x0.shape, generator=gen(6), dtype=torch.float64)
        xt = c.forward(x0, eps, t)
        back = c.to_x0(c.target(x0, eps, t), xt, t)
        assert float((back - x0).abs().max()) < 1e-9, prediction


def test_blur_refuses_singular_targets():
    # the finest frequencies decay to ~0 at t = 1: eps (x_0 = (x_t - s eps)/a) divides by a
    with pytest.raises(udm.ConfigError, match=r"corruption blur: prediction/weighting must be non-singular.*"
                                              r"got eps/none.*Safe choices.*x0/none"):
        BlurCorruption(noise="linear", sigma=0.1, prediction="eps")
    for prediction in ("score", "flow"):
        with pytest.raises(udm.ConfigError, match=rf"got {prediction}/none, where the x_0 conversion"):
            BlurCorruption(noise="vp", sigma=0.5, prediction=prediction)
    with pytest.raises(udm.ConfigError, match=r"got x0/eps, where the loss weight grows without bound at t = 1e-09"):
        BlurCorruption(sigma=0.5, weighting="eps")
    with pytest.raises(udm.ConfigError, match=r"corruption blur: family 'laplace' \(L1\) needs prediction 'x0'"):
        BlurCorruption(family="laplace", prediction="v")


@pytest.mark.parametrize("time_type", [Discrete(100), Continuous()], ids=["discrete", "continuous"])
def test_blur_ddpm_passes_the_marginal_check(time_type):
    c = BlurCorruption(blur="sin2", noise="linear", sigma=0.2)
    x0 = images(1, 1, 4, 4, seed=7)
    c.fit(images(8, 1, 4, 4, seed=8))
    assert_conforms(c, x0, time_type=time_type, n=1500, samplers=["ddpm", "posterior"])


# ------------------------------------------------------------------- a coloured-noise instance
class Coloured(udm.LinearGaussian):
    """Heat dissipation with frequency-dependent noise: a_ij(t) = cos(pi t / 2) exp(-0.3 lambda_ij t),
    s_ij(t) = sin(pi t / 2) (1 + lambda_ij)^(-1/2) (pink-ish); a(1) = 0, so the default prior is exact."""

    name = "coloured"
    basis = DCT2()

    def __init__(self, prediction="v"):
        super().__init__(prediction)
        self._check_parameterization()

    def amplitudes(self, t, shape):
        lam = heat_frequencies(*shape[-2:])
        a = torch.exp(-lam[None] * 0.3 * t[:, None, None])[:, None]
        s = torch.sin(t * math.pi / 2)[:, None, None, None] * (1 + lam)[None, None].rsqrt()
        return torch.cos(t * math.pi / 2)[:, None, None, None] * a, s


def test_coloured_noise_instance_conforms_and_has_the_exact_posterior():
    c = Coloured()
    x0 = images(1, 1, 4, 4, seed=9)
    assert_conforms(c, x0, time_type=Continuous(), n=1500, samplers=["invert", "ddpm", "posterior", "refresh"])
    # noise really is coloured: the forward's noise covariance in the DCT basis is diag(s_ij^2)
    t = torch.full((4000,), 0.6, dtype=torch.float64)
    xt = c.forward(x0.expand(4000, -1, -1, -1), c.sample_noise(x0.expand(4000, -1, -1, -1), gen(1)), t)
    var = DCT2().forward(xt).var(0)
    want = c.marginal(t[:1], x0).s64[0] ** 2
    assert float(((var - want) / want).abs().max()) < 6 * math.sqrt(2 / 4000)


# ----------------------------------------------------------------- the posterior's capability gap
class Sharpening(udm.LinearGaussian):
    """An (invalid as a Markov chain) corruption whose noise-to-signal ratio *falls* with t on one
    coefficient: a closed-form posterior cannot exist there."""

    name = "sharpening"

    def amplitudes(self, t, shape):
        return 1 - 0.5 * t, 0.5 * t * (1 - 0.9 * t)


def test_posterior_gap_is_a_clear_capability_error_not_nan():
    c = Sharpening(prediction="x0")
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(udm.CapabilityError, match=r"corruption sharpening: posterior p\(x_s \| x_t, x_0\) needs "
                                                  r"s_t\^2 >= \(a_t/a_s\)\^2 s_s\^2.*Use the invert or refresh"):
        c.posterior(x, x, torch.full((3,), 0.9, dtype=torch.float64), torch.full((3,), 0.6, dtype=torch.float64), None)
    # where it exists (small t) it is finite
    out = c.posterior(x, x, torch.full((3,), 0.3, dtype=torch.float64), torch.full((3,), 0.1, dtype=torch.float64),
                      gen(0))
    assert bool(torch.isfinite(out).all())


def test_sampling_returns_the_clean_batch_on_the_last_step_for_every_rule():
    c = BlurCorruption(sigma=0.1)
    x0 = images(5, 1, 8, 8)
    c.fit(x0)
    reg = udm.registry()
    grid = torch.linspace(1, 0, 6, dtype=torch.float64)
    for name in udm.supported_samplers(c, reg):
        opts = {"amount": 0.5} if name == "refresh" else {}
        out = reg.get("sampler", name)(FixedDenoiser(x0), c, grid, c.sample_prior(x0.shape, gen(0), dtype=x0.dtype),
                                       generator=gen(1), **opts)
        assert torch.equal(out, x0), name


# ----------------------------------------------------------- refresh at the schedule's end (issue 18)
def test_one_ddpm_step_on_diffusers_cosine_table_matches_float64_issue_18(reg):
    """Issue 18, item 4: from n = 1000 to 750 on diffusers' cosine table, SNR_t / SNR_s = 1.4e-8, so the kept
    fraction of eps_hat, sqrt(1 - a^2) with a = sqrt(1 - SNR_t/SNR_s), cancels to 0 in float32 instead of
    sqrt(SNR_t/SNR_s) = 1.2e-4. One float32 ``ddpm`` step must match the float64 hand computation of
    x_s = alpha_s x0 + sigma_s (sqrt(rho) eps_hat + sqrt(1 - rho) z) to float32 rounding."""
    c = reg.create("corruption", "gaussian", schedule={"name": "table", "beta_schedule": "squaredcos_cap_v2"})
    times = Discrete(1000).grid(4)
    n = 4096
    den = lambda x, t, g=None: 0.5 * torch.tanh(x)  # noqa: E731 - any deterministic x0_hat
    steps = []
    reg.get("sampler", "ddpm")(den, c, times, c.sample_prior((n, 2), gen(0)), generator=gen(1), callback=steps.append)
    x_s = steps[0].x
    # by hand, float64, the same draws: the prior's eps (seed 0), the refresh's z (seed 1)
    eps1, z = torch.randn(n, 2, generator=gen(0)).double(), torch.randn(n, 2, generator=gen(1)).double()
    sch = c.schedule(times[:2])
    (a_t, a_s), (s_t, s_s) = sch.alpha.tolist(), sch.sigma.tolist()
    x_t = (eps1 * s_t).float().double()  # the prior was drawn in float32
    x0 = 0.5 * torch.tanh(x_t.float()).double()
    eps_hat = (x_t - a_t * x0) / s_t
    rho = (a_t * s_s) ** 2 / (a_s * s_t) ** 2
    want = a_s * x0 + s_s * (math.sqrt(rho) * eps_hat + math.sqrt(1 - rho) * z)
    err = float((x_s.double() - want).abs().max())
    # what the float32 formula sqrt(1 - a^2), a = sqrt(1 - rho), gave before
    a32 = torch.tensor(1 - rho, dtype=torch.float32).sqrt()
    old = a_s * x0 + s_s * (float((1 - a32 * a32).clamp_min(0).sqrt()) * eps_hat + float(a32) * z)
    old_err = float((old - want).abs().max())
    print(f"rho {rho:.3g}; error {err:.2e}, the float32 formula's {old_err:.2e}")
    assert 1e-8 < rho < 6e-8
    assert err < 2e-6 < old_err / 100


def test_blur_eps_round_trip_holds_inside_the_range_where_it_is_non_singular():
    """eps is refused for blur as a training target (the finest frequencies vanish at t = 1), but the
    conversion itself is exact per frequency wherever a_ij(t) is not tiny."""
    c = BlurCorruption(noise="vp", sigma=0.5)
    p = udm.Parameterization("eps")
    x0 = images(seed=11)
    eps = torch.randn(x0.shape, generator=gen(12), dtype=torch.float64)
    t = torch.linspace(0.02, 0.15, 6, dtype=torch.float64)  # early enough that every frequency keeps a_ij > 0.1
    m = c.marginal(t, x0)
    assert float(m.a64.min()) > 0.1
    xt = c.forward(x0, eps, t)
    back = c.from_basis(p.to_x0(c.to_basis(eps), c.to_basis(xt), m.a, m.s))
    assert float((back - x0).abs().max()) < 1e-8


def test_an_instance_reports_its_own_capabilities():
    """A wrapper says what it really supports (udm.capabilities asks the instance before discovering)."""
    class Wrapper(BlurCorruption):
        def capabilities(self):
            return {"noise_posterior", "vector_space"}

    w = Wrapper(sigma=0.1)
    assert udm.capabilities(w) == {"noise_posterior", "vector_space"}
    names = udm.supported_samplers(w)
    assert "ddim" in names and "ddpm" not in names and "posterior" not in names


def test_gradients_through_the_denoiser_are_opt_in():
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time = reg.create("time", "discrete", steps=100)
    net = torch.nn.Linear(2, 2).double()

    class Net(torch.nn.Module):
        def forward(self, x, t):
            return net(x)

    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    assert not udm.Denoiser(Net(), corr, time).predict(x, t).x0_hat.requires_grad  # sampling needs no graph
    out = udm.Denoiser(Net(), corr, time, grad=True).predict(x, t).x0_hat
    out.sum().backward()  # e.g. classifier guidance differentiates x0_hat with respect to x_t
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_sampling_follows_the_network_dtype():
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear")
    time = reg.create("time", "discrete", steps=100)
    net64 = reg.create("model", "mlp", data_shape=[2], width=8, depth=1).double()
    x = udm.sample(net64, corr, time, shape=(3, 2), steps=3)
    assert x.dtype == torch.float64
    assert udm.sample(net64.float(), corr, time, shape=(3, 2), steps=3).dtype == torch.float32
