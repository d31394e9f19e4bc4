"""The optimal-variance sources: the mixture oracle's exact posterior, the Monte-Carlo fits (``analytic``,
``residual``, ``exact``) against it within their standard errors, the clip and the Gamma_t > 1 flag, and Su's
two closed forms (DDPM's beta_tilde and beta) with the sigma_t <= s_s guard of their sigma-family form."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import CapabilityError, ConfigError, UdmWarning
from udm.plugins.blur import BlurCorruption
from udm.testing import GaussianMixture
from udm.variance import ClosedFormVariance, su_refresh_amount


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def reg():
    return udm.registry()


@pytest.fixture(scope="module")
def vp(reg):
    return reg.create("corruption", "gaussian", schedule="linear", prediction="eps")


@pytest.fixture(scope="module")
def discrete(reg):
    return reg.create("time", "discrete", steps=1000)


# ------------------------------------------------------------------------------------------------ the oracle
def test_mixture_posterior_matches_numerical_integration_in_1d(vp):
    """E[x0 | x_t] and Var[x0 | x_t] of a 1-D mixture against quadrature of p(x0) N(x_t; a x0, s^2)."""
    mix = GaussianMixture.random(3, 1, std=0.3, seed=4)
    x0 = torch.linspace(-4, 4, 40001, dtype=torch.float64)
    prior = mix.log_prob(x0[:, None]).exp()
    x_t = torch.tensor([[-1.3], [0.2], [0.9]], dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    m = vp.marginal(t, x_t, derivatives=False)
    a, s = float(m.a64.reshape(-1)[0]), float(m.s64.reshape(-1)[0])
    post = mix.posterior(x_t, vp, t)
    for i in range(3):
        w = prior * torch.exp(-0.5 * ((float(x_t[i]) - a * x0) / s) ** 2)
        mean = float((w * x0).sum() / w.sum())
        var = float((w * x0 * x0).sum() / w.sum()) - mean**2
        assert abs(float(post.mean[i]) - mean) < 1e-6 and abs(float(post.variance[i]) - var) < 1e-6


def test_mixture_posterior_is_per_frequency_under_blur():
    """One isotropic component N(mu, v I) under blur: per DCT coefficient the posterior is the scalar Gaussian one,
    mean m + a v / (a^2 v + s^2) (c_t - a m) and variance v s^2 / (a^2 v + s^2)."""
    c = BlurCorruption(noise="vp", sigma=0.7)
    mu = torch.randn(1, 1, 4, 4, generator=gen(0), dtype=torch.float64)
    mix = GaussianMixture(mu, torch.tensor([0.5]), torch.tensor([1.0]))
    x_t = torch.randn(3, 1, 4, 4, generator=gen(1), dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    m = c.marginal(t, x_t, derivatives=False)
    a, s2, v = m.a64, m.s64.reshape(-1, 1, 1, 1) ** 2, 0.25
    cm, ct = c.to_basis(mu), c.to_basis(x_t)
    post = mix.posterior(x_t, c, t)
    torch.testing.assert_close(c.to_basis(post.mean), cm + a * v / (a * a * v + s2) * (ct - a * cm))
    torch.testing.assert_close(post.variance, (v * s2 / (a * a * v + s2)).expand(3, 1, 4, 4))


def test_mixture_log_prob_and_the_old_interface(vp):
    mix = GaussianMixture.ring()
    x = mix.sample(5, gen(2), torch.float64)
    comps = [torch.distributions.MultivariateNormal(mix.means[j], torch.diag(mix.stds[j] ** 2)) for j in range(8)]
    ref = torch.stack([c.log_prob(x) for c in comps], 1) + mix.weights.log()
    torch.testing.assert_close(mix.log_prob(x), ref.logsumexp(1))
    t = torch.full((5,), 0.3, dtype=torch.float64)
    sch = vp.schedule(t)
    torch.testing.assert_close(mix.posterior_mean(x, sch.alpha, sch.sigma), mix.posterior(x, vp, t).mean)


# ------------------------------------------------------------------------------------------ Monte-Carlo fits
@pytest.mark.filterwarnings("ignore:fit_variance. Gamma_t")  # near t = 1 Gamma_t > 1 by chance (test_clip_and_flag)
@pytest.mark.parametrize("dim", [1, 64])
def test_analytic_matches_exact_within_its_standard_error_on_a_10_step_grid(vp, discrete, dim):
    """With the exact mean, Analytic-DPM's (s^2/a^2)(1 - Gamma_t) estimates the oracle's E Var[x0 | x_t] at every
    time of a 10-step grid to within 4 combined standard errors (10 comparisons per case, fixed seeds)."""
    mix = GaussianMixture.random(5, dim, std=0.2, seed=1)
    data = mix.sample(4000, gen(2), torch.float64)
    analytic = udm.fit_variance(mix.denoiser(vp), vp, discrete, data, steps=10, samples=2000, generator=gen(3))
    exact = udm.fit_variance(None, vp, discrete, source="exact", oracle=mix, steps=10, samples=2000, generator=gen(4))
    assert torch.equal(analytic.times, exact.times) and len(analytic.times) == 10
    z = (analytic.table.values - exact.table.values).abs() / (analytic.stderr**2 + exact.stderr**2).sqrt()
    assert float(z.max()) < 4, z
    assert bool((analytic.table.values <= analytic.bound).all()) and bool((analytic.table.values >= 0).all())
    # informative where the estimate is sharp: at t = 0.1 the error is a few per cent of the value
    assert float(analytic.stderr[0]) < 0.05 * float(exact.table.values[0])


def test_residual_with_the_exact_mean_is_the_exact_variance(vp, discrete):
    mix = GaussianMixture.random(4, 3, std=0.2, seed=5)
    data = mix.sample(3000, gen(6), torch.float64)
    res = udm.fit_variance(mix.denoiser(vp), vp, discrete, data, source="residual", times=[0.2, 0.5], samples=3000,
                           generator=gen(7))
    exact = udm.fit_variance(None, vp, discrete, source="exact", oracle=mix, times=[0.2, 0.5], samples=3000,
                             generator=gen(8))
    z = (res.table.values - exact.table.values).abs() / (res.stderr**2 + exact.stderr**2).sqrt()
    assert float(z.max()) < 4
    # an imperfect mean: the residual grows by exactly its bias^2 (x0_hat = E[x0 | x_t] + 0.1)
    shifted = udm.fit_variance(lambda x, t, g: mix.denoiser(vp)(x, t) + 0.1, vp, discrete, data, source="residual",
                               times=[0.2, 0.5], samples=3000, generator=gen(7))
    torch.testing.assert_close(shifted.table.values, res.table.values + 0.01, atol=2e-3, rtol=0)


def test_per_frequency_analytic_under_blur_matches_the_exact_variance():
    """Per DCT coefficient under blur: every frequency's Sigma within 4.5 standard errors of the exact one (32
    comparisons); the exact per-frequency values differ by a factor > 2 (high frequencies are blurred away)."""
    c = BlurCorruption(noise="vp", sigma=0.8)
    time = udm.registry().create("time", "continuous")
    mix = GaussianMixture.random(3, (1, 4, 4), std=0.3, seed=2)
    data = mix.sample(3000, gen(3), torch.float64)
    kw = dict(times=[0.3, 0.6], samples=3000, per_coefficient=True)
    fit = udm.fit_variance(mix.denoiser(c), c, time, data, generator=gen(4), **kw)
    exact = udm.fit_variance(None, c, time, source="exact", oracle=mix, generator=gen(5), **kw)
    assert fit.table.values.shape == (2, 1, 4, 4) == fit.coefficient_stderr.shape
    z = (fit.table.values - exact.table.values).abs() / (fit.coefficient_stderr**2 + exact.coefficient_stderr**2).sqrt()
    assert float(z.max()) < 4.5, z
    ratio = exact.table.values.flatten(1).max(1).values / exact.table.values.flatten(1).min(1).values
    assert float(ratio.min()) > 2
    # the scalar table is the per-coefficient one averaged
    scalar = udm.fit_variance(mix.denoiser(c), c, time, data, generator=gen(4), **{**kw, "per_coefficient": False})
    torch.testing.assert_close(scalar.table.values, fit.scalar)


def test_clip_and_flag(vp, discrete):
    """A model whose eps_hat is too large (Gamma_t > 1, a failed estimate) gets the bound and a warning naming the
    times; one whose eps_hat is 0 gets at most the linear-MMSE bound v s^2 / (a^2 v + s^2) (not s^2/a^2)."""
    data = torch.randn(500, 2, generator=gen(0), dtype=torch.float64) * 0.5

    def loud(x, t, g):  # x0_hat such that eps_hat = 1.5 x_t / s: Gamma ~ 2.25 Var[x_t] / s^2 > 1
        sch = vp.schedule(t)
        a, s = sch.alpha[:, None], sch.sigma[:, None]
        return (x - s * 1.5 * x / s) / a

    with pytest.warns(UdmWarning, match=r"fit_variance: Gamma_t = E\|\|eps_hat\|\|\^2/d must be <= 1; got > 1 at 3 of "
                                         r"3 times \(t = 0\.1, 0\.5, 0\.9\)"):
        fit = udm.fit_variance(loud, vp, discrete, data, times=[0.1, 0.5, 0.9], samples=500)
    assert fit.flagged == [0.1, 0.5, 0.9] and torch.equal(fit.table.values, fit.bound)
    assert bool((fit.raw < 0).all())
    quiet = udm.fit_variance(lambda x, t, g: x / vp.schedule(t).alpha[:, None], vp, discrete, data,
                             times=[0.1, 0.5, 0.9], samples=500)
    torch.testing.assert_close(quiet.table.values, quiet.bound)
    sch = vp.schedule(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    v = udm.variance_fit.data_variance(data, vp)  # (2,) per coefficient; the scalar bound is their bounds' mean
    a2, s2 = sch.alpha[:, None] ** 2, sch.sigma[:, None] ** 2
    torch.testing.assert_close(quiet.bound, (v * s2 / (a2 * v + s2)).mean(1), rtol=1e-12, atol=0)


def test_fit_variance_bad_input(vp, discrete, reg):
    data = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"fit_variance: exactly one of times, steps or dense must be given; got "
                                          r"steps, dense"):
        udm.fit_variance(lambda x, t, g: x, vp, discrete, data, steps=4, dense=8)
    with pytest.raises(ConfigError, match=r"fit_variance: source must be one of analytic, residual, exact; got 'sn'"):
        udm.fit_variance(lambda x, t, g: x, vp, discrete, data, steps=4, source="sn")
    with pytest.raises(ConfigError, match=r"fit_variance: source 'exact' needs oracle="):
        udm.fit_variance(None, vp, discrete, data, steps=4, source="exact")
    with pytest.raises(ConfigError, match=r"fit_variance: spacing must be a fixed grid spacing .*got 'optimal'"):
        udm.fit_variance(lambda x, t, g: x, vp, discrete, data, steps=4, spacing="optimal")
    mask = reg.create("corruption", "mask", vocab_size=4)
    with pytest.raises(CapabilityError, match=r"fit_variance: variance 'analytic' needs a linear-Gaussian corruption "
                                              r"with a Gaussian q_theta; got 'mask'"):
        udm.fit_variance(lambda x, t, g: x, mask, discrete, data, steps=4)


def test_dense_tables_interpolate_and_grid_tables_refuse(vp, discrete):
    mix = GaussianMixture.random(2, 2, seed=0)
    dense = udm.fit_variance(None, vp, discrete, source="exact", oracle=mix, dense=50, samples=200)
    assert dense.table.interpolate and len(dense.times) == 50 and dense.grid == {"dense": 50}
    x = torch.zeros(2, 2, dtype=torch.float64)
    between = dense.table(torch.full((2,), 0.333, dtype=torch.float64), x)
    lo, hi = dense.table.lookup(torch.tensor([0.32])), dense.table.lookup(torch.tensor([0.34]))
    assert float(lo.min(hi)) <= float(between[0]) <= float(lo.max(hi))
    grid = udm.fit_variance(None, vp, discrete, source="exact", oracle=mix, steps=5, samples=200)
    assert grid.grid == {"steps": 5, "spacing": "uniform"} and not grid.table.interpolate
    with pytest.raises(ConfigError, match=r"variance table: sampling time t = 0\.333 must be one of the table's 5 times"):
        grid.table(torch.full((2,), 0.333, dtype=torch.float64), x)


# ----------------------------------------------------------------------------------- Su's two closed forms
@pytest.mark.parametrize("law", ["small", "large"])
def test_closed_forms_are_ddpms_two_variances_with_the_posterior_rule(vp, law):
    """posterior rule + Sigma = 0 is DDPM's beta_tilde; + Sigma = s^2/(a^2 + s^2) (N(0, I) data) is DDPM's beta =
    1 - alpha_bar_t / alpha_bar_s, on a strided step (Ho notation alpha_bar = a^2), in closed form and sampled."""
    t, s = 0.7, 0.3
    n = 200000
    x_t = torch.full((n, 1), 0.4, dtype=torch.float64)
    den = udm.Denoiser(_Const(0.25), udm.registry().create("corruption", "gaussian", schedule="linear", prediction="x0"),
                       udm.registry().create("time", "discrete", steps=1000),
                       variance=ClosedFormVariance(vp, law))
    states = []
    udm.samplers.RULES["posterior"](den, den.corruption, torch.tensor([t, s, 0.0], dtype=torch.float64), x_t,
                                    generator=gen(0), callback=lambda st: states.append(st.x))
    sch = vp.schedule(torch.tensor([t, s], dtype=torch.float64))
    abar_t, abar_s = float(sch.alpha[0]) ** 2, float(sch.alpha[1]) ** 2
    beta = 1 - abar_t / abar_s
    want = beta * (1 - abar_s) / (1 - abar_t) if law == "small" else beta
    assert abs(float(states[0].var()) / want - 1) < 5 * math.sqrt(2 / n)


class _Const(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t):
        return torch.full_like(x, self.c)


def test_su_sigma_family_guard(vp):
    """Su's sigma-family form: small = DDPM (r = sqrt(1 - SNR_t/SNR_s)); large = beta_t capped at s_s: on the step to a
    time whose s_s < beta_t (here t = 0.5 -> s = 0.001) r = 1, never > 1 (sqrt(s_s^2 - sigma^2) stays real)."""
    small, large = su_refresh_amount(vp, "small"), su_refresh_amount(vp, "large")
    t = torch.tensor([0.5, 0.5], dtype=torch.float64)
    s = torch.tensor([0.45, 0.001], dtype=torch.float64)
    sch_t, sch_s = vp.schedule(t), vp.schedule(s)
    snr = (sch_t.alpha / sch_t.sigma) ** 2 / (sch_s.alpha / sch_s.sigma) ** 2
    torch.testing.assert_close(small(t, s), (1 - snr).sqrt())
    beta = (1 - sch_t.alpha**2 / sch_s.alpha**2).sqrt()
    assert float(beta[1]) > float(sch_s.sigma[1])  # the guard is needed here
    assert float(beta[0]) < float(sch_s.sigma[0])  # and not here
    torch.testing.assert_close(large(t, s), torch.stack([beta[0] / sch_s.sigma[0], torch.ones((), dtype=torch.float64)]))
    with pytest.raises(CapabilityError, match=r"su_refresh_amount: corruption 'blur' must have an affine schedule\(t\) "
                                              r"\(one amplitude pair per time\); got none"):
        su_refresh_amount(BlurCorruption(), "large")
