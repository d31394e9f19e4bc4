"""Likelihoods of linear-Gaussian corruptions against Gaussian data N(mu, Sigma), whose log p(x), exact denoiser
and exact posterior covariance are closed forms (udm.testing.GaussianData). Statistical checks compare the
per-example estimates with the per-example truth: their mean difference against its standard error."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.likelihoods._gaussian import discretised_log_prob
from udm.testing import GaussianData


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diff_stats(result: udm.LikelihoodResult, data: GaussianData, x: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of the per-example estimate minus the true -log p(x), per dimension."""
    d = (result.per_example + data.log_prob(x)) / data.dims
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


@pytest.fixture(scope="module")
def setup(reg):
    data = GaussianData.random((3,), seed=0)
    c = reg.create("corruption", "gaussian", schedule="cosine")
    return data, c, reg.create("time", "discrete", steps=1000)


def test_gaussian_data_oracle_is_the_exact_posterior(setup):
    """E[x_0 | x_t] of a Gaussian is linear in x_t with residuals uncorrelated with x_t (checked on draws within 4
    standard errors), and the oracle's variance is the residuals' variance."""
    data, c, _ = setup
    n = 40000
    x0 = data.sample(n, g(1))
    t = torch.full((n,), 0.6, dtype=torch.float64)
    x_t = c.forward(x0, torch.randn(x0.shape, generator=g(2), dtype=torch.float64), t)
    resid = x0 - data.denoiser(c)(x_t, t).mean
    sd = resid.std(0)
    assert bool((resid.mean(0).abs() < 4 * sd / math.sqrt(n)).all())
    cov = (resid - resid.mean(0)).T @ (x_t - x_t.mean(0)) / n
    assert bool((cov.abs() < 4 * sd[:, None] * x_t.std(0)[None] / math.sqrt(n)).all()), cov
    var = data.variance(c)(t[:1], x_t[:1])[0]
    assert bool(((resid.var(0) - var).abs() < 4 * var * math.sqrt(2 / n)).all())


def test_ode_with_the_exact_trace_equals_log_density_to_1e_4_per_dim(setup):
    data, c, time = setup
    x = data.sample(100, g(1))
    r = udm.likelihood(data.denoiser(c), x, "ode", corruption=c, time_type=time, t_min=1e-5, rtol=1e-8, atol=1e-8)
    err = (r.per_example + data.log_prob(x)).abs() / data.dims
    assert float(err.max()) < 1e-4, float(err.max())
    assert r.settings["trace"] == "auto" and r.kind == "density" and r.bits_per_dim is None and not r.bound


def test_ode_in_the_dct_basis_equals_log_density(reg):
    """blur: per-frequency amplitudes in the DCT basis (the velocity and its divergence are formed in the basis)."""
    data = GaussianData.random((1, 2, 2), seed=3)
    c = reg.create("corruption", "blur", noise="vp", sigma=0.999)  # alpha_1 = 0.045 keeps the amplitudes smooth at 1
    c._mean, c._cov = data.mean.mean()[None], data.cov.mean()[None, None]  # the law of the channel mean: exact prior
    x = data.sample(20, g(1)).float()
    r = udm.likelihood(data.denoiser(c), x, "ode", corruption=c, time_type=reg.create("time", "continuous"),
                       t_min=1e-5, rtol=1e-8, atol=1e-8, units="nats")  # image-shaped: a density on request
    err = (r.per_example + data.log_prob(x)).abs() / data.dims
    assert float(err.max()) < 1e-4, float(err.max())


def test_ode_with_hutchinson_is_within_three_standard_errors(setup):
    data, c, time = setup
    x = data.sample(400, g(1))
    r = udm.likelihood(data.denoiser(c), x, "ode", corruption=c, time_type=time, t_min=1e-5, trace="hutchinson",
                       probes=2, seed=5)
    mean, se = diff_stats(r, data, x)
    assert 1e-3 < se < 0.05 and abs(mean) < 3 * se, (mean, se)  # probes do add noise, and it is unbiased


def test_ode_fixed_step_solver_converges(setup):
    data, c, time = setup
    x = data.sample(50, g(1))
    errs = []
    for steps in (10, 40):
        r = udm.likelihood(data.denoiser(c), x, "ode", corruption=c, time_type=time, t_min=1e-3, solver="rk4",
                           steps=steps)
        exact = udm.likelihood(data.denoiser(c), x, "ode", corruption=c, time_type=time, t_min=1e-3, rtol=1e-9,
                               atol=1e-9)
        errs.append(float((r.per_example - exact.per_example).abs().max()))
    assert errs[1] < errs[0] / 20 and errs[1] < 1e-4, errs


def test_elbo_continuous_equals_log_density_within_monte_carlo_error(setup):
    data, c, time = setup
    x = data.sample(2000, g(1))
    ses = {}
    for density in ("log", "uniform"):
        r = udm.likelihood(data.denoiser(c), x, "elbo_continuous", corruption=c, time_type=time, t_min=1e-4,
                           draws=8, t_density=density, batch_size=2000, seed=2)
        mean, ses[density] = diff_stats(r, data, x)
        assert abs(mean) < 3 * ses[density], (density, mean, ses[density])
        assert r.bound and r.terms.prior == 0.0  # cosine: alpha(1) = 0, the prior is exact
    assert ses["log"] < 0.06 and ses["uniform"] > 3 * ses["log"], ses  # the 1/t integrand: log-uniform t tames it


def test_elbo_discrete_decreases_with_steps_and_exact_variance_is_best(setup):
    """Analytic-DPM's ordering: with the exact posterior variance (the optimal q_theta variance when the mean is
    exact) every KL term is smallest, so the bound is below large's and small's at every K; large's and exact's
    bounds fall as K grows."""
    data, c, time = setup
    x = data.sample(2000, g(1))
    exact = data.variance(c)
    values: dict[str, list[float]] = {"small": [], "large": [], "exact": []}
    for k in (1, 2, 5, 20):
        runs = {}
        for name, v in (("small", "small"), ("large", "large"), ("exact", exact)):
            runs[name] = udm.likelihood(data.denoiser(c), x, "elbo_discrete", corruption=c, time_type=time, steps=k,
                                        variance=v, batch_size=2000, seed=3)  # the same draws for all three
            values[name].append(runs[name].nats_per_dim)
        for worse in ("small", "large"):
            d = (runs[worse].per_example - runs["exact"].per_example) / data.dims
            if k == 1 and worse == "small":
                assert torch.equal(runs["small"].per_example, runs["large"].per_example)  # one step: the decoder
            assert float(d.mean()) > 3 * float(d.std() / math.sqrt(len(d))), (k, worse)
    for name in ("large", "exact"):
        assert all(a > b for a, b in zip(values[name], values[name][1:])), (name, values[name])
    truth = float(-data.log_prob(x).mean()) / data.dims
    assert values["exact"][-1] - truth < 0.03 and values["large"][0] - truth > 0.3, (values, truth)


@pytest.mark.filterwarnings("ignore:fit_variance")  # Gamma_t near 1 at t ~ 1 (no signal there): its bound is used
def test_analytic_dpm_variance_lies_between_large_and_exact(setup):
    """Analytic-DPM's variance (udm.fit_variance, one value per time fitted from the model and training data) is
    the best scalar q_theta variance: its bound is below large's and above the exact per-coefficient variance's
    (the same x_t draws for the three, so the per-example differences carry only the variances' effect)."""
    data, c, time = setup
    x, train = data.sample(2000, g(1)), data.sample(4000, g(9))
    den = data.denoiser(c)
    for k in (5, 20):
        fit = udm.fit_variance(lambda x_t, t, gen: den(x_t, t, gen).mean, c, time, train, source="analytic", steps=k,
                               samples=4000, batch_size=4000)
        runs = [udm.likelihood(den, x, "elbo_discrete", corruption=c, time_type=time, steps=k, variance=v,
                               batch_size=2000, seed=3) for v in ("large", fit.table, data.variance(c))]
        for worse, better in ((runs[0], runs[1]), (runs[1], runs[2])):
            d = (worse.per_example - better.per_example) / data.dims
            assert float(d.mean()) > 3 * float(d.std() / math.sqrt(len(d))), (k, [r.nats_per_dim for r in runs])


def test_exact_variance_bound_is_tight_for_a_diagonal_covariance(reg):
    """With Sigma diagonal in the basis, q_theta = N(E[x_0|x_t], Cov[x_0|x_t]) makes every reverse step the exact
    q(x_s | x_t): the K-step bound equals -log p(x) (within Monte-Carlo error) at any K."""
    base = GaussianData.random((3,), seed=0)
    data = GaussianData(base.mean, torch.diag(torch.diagonal(base.cov)), (3,))
    c = reg.create("corruption", "gaussian", schedule="cosine")
    x = data.sample(2000, g(1))
    for k in (1, 5, 20):  # at K = 20 a step variance off by k_0 (not k_0^2) costs 0.3 nats/dim (se 0.013)
        r = udm.likelihood(data.denoiser(c), x, "elbo_discrete", corruption=c, time_type=reg.create("time", "discrete"),
                           steps=k, variance=data.variance(c), batch_size=2000)
        mean, se = diff_stats(r, data, x)
        assert abs(mean) < 3 * se + 1e-6 and se < 0.02, (k, mean, se)


def test_elbo_discrete_sampled_steps_agree_with_the_full_sum(setup):
    data, c, time = setup
    x = data.sample(1000, g(1))
    full = udm.likelihood(data.denoiser(c), x, "elbo_discrete", corruption=c, time_type=time, steps=50, seed=4)
    sampled = udm.likelihood(data.denoiser(c), x, "elbo_discrete", corruption=c, time_type=time, steps=50, draws=8,
                             seed=5)
    d = (sampled.per_example - full.per_example) / data.dims
    assert abs(float(d.mean())) < 3 * float(d.std() / math.sqrt(len(d)))
    assert full.terms.reconstruction == pytest.approx(sampled.terms.reconstruction, rel=0.2)


def test_prior_term_is_the_closed_form_kl(reg):
    c = reg.create("corruption", "gaussian", schedule="linear")  # alpha(1) > 0: a small prior term
    x = torch.randn(8, 3, generator=g(0), dtype=torch.float64)
    r = udm.likelihood(lambda x_t, t, gen: x_t * 0, x, "elbo_discrete", corruption=c,
                       time_type=reg.create("time", "discrete"), steps=1)
    s = c.schedule(torch.ones(1, dtype=torch.float64))
    assert r.terms.prior == pytest.approx(float((0.5 * (s.alpha * x) ** 2 / s.sigma ** 2).sum() / x.numel()),
                                          rel=1e-9)


def test_discretised_decoder_is_a_distribution_over_the_levels():
    q = udm.Quantisation(17, (-1.0, 1.0))
    levels = q.values(torch.arange(17), torch.float64)[:, None].expand(17, 5)
    mean = torch.tensor([-1.3, -0.2, 0.05, 0.9, 2.0], dtype=torch.float64).expand(17, 5)
    std = torch.tensor([0.01, 0.1, 0.5, 2.0, 1e-6], dtype=torch.float64).expand(17, 5)
    total = discretised_log_prob(levels, mean, std, q).exp().sum(0)
    assert torch.allclose(total, torch.ones(5, dtype=torch.float64), atol=1e-12)
    far = discretised_log_prob(torch.tensor([1.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64),
                               torch.tensor([0.01], dtype=torch.float64), q)
    assert math.isfinite(float(far)) and float(far) < -1000  # the upper tail, without cancellation


def test_quantised_data_give_positive_bits_per_dim_and_the_uniform_offset(reg):
    """A continuous model of 4-level data: the discretised decoder and uniform dequantisation both give a
    probability (bits/dim in (0, 2]); uniform dequantisation adds exactly -log(bin width) per dimension."""
    q = udm.Quantisation(4, (-1.0, 1.0))
    data = GaussianData.random((2,), seed=1)
    x = q.values(q.levels(data.sample(300, g(1)).clamp(-1, 1)), torch.float64)
    c = reg.create("corruption", "gaussian", schedule="cosine")
    time = reg.create("time", "continuous")
    den = data.denoiser(c)  # the Gaussian's denoiser: a poor but proper model of the levels
    disc = udm.likelihood(den, x, "elbo_discrete", corruption=c, time_type=time, quantisation=q, steps=20)
    unif = udm.likelihood(den, x, "ode", corruption=c, time_type=time, quantisation=q)
    assert disc.dequantisation == "discretised" and unif.dequantisation == "uniform"
    assert unif.terms.dequantisation == pytest.approx(-math.log(q.step))
    for r in (disc, unif):
        assert r.kind == "discrete" and 0 < r.bits_per_dim and r.bits_per_dim == pytest.approx(r.nats_per_dim / math.log(2))
    raw = udm.likelihood(den, x, "ode", corruption=c, time_type=time, quantisation=q, dequantisation="none")
    assert raw.bits_per_dim is None and raw.kind == "density"


def test_blur_prior_logp_is_the_density_of_its_prior(reg):
    c = reg.create("corruption", "blur")
    x = reg.create("dataset", "digits", n=200)
    c.fit(x)
    x1 = c.sample_prior((5, 1, 8, 8), g(0)).double()
    a, s = (float(v) for v in c.noise_amplitudes(torch.ones(1)))
    cov = a ** 2 * float(c._cov) * torch.ones(64, 64, dtype=torch.float64) + s ** 2 * torch.eye(64, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(a * float(c._mean) * torch.ones(64, dtype=torch.float64), cov)
    assert torch.allclose(c.prior_logp(x1), mvn.log_prob(x1.reshape(5, -1)), rtol=1e-10)
