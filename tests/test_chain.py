"""The ``chain`` corruption (issue 14): corruptions applied one after another at the same t.

A chain of linear-Gaussian parts diagonal in one basis is itself linear-Gaussian: ``chain([blur(sigma=0),
gaussian])`` must equal the built-in blur-with-noise in every derived quantity (to 1e-10, float64) and pass the
conformance kit for every sampler it offers. Any other chain (``mask_pixels`` then ``gaussian``) offers only what
is exact (renoise), refuses the others with the reason, and passes the kit for what it offers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import udm
from udm.errors import CapabilityError, ConfigError
from udm.plugins.chain import GeneralChain, LinearChain
from udm.testing import assert_conforms, check_corruption

TOL = 1e-10


class NoiseRamp(udm.Schedule):
    """alpha = 1, sigma = c t: the blur corruption's ``linear`` noise as a schedule for ``gaussian``."""

    name = "noise_ramp"

    def __init__(self, c: float) -> None:
        self.c = c

    def amplitudes(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), self.c * t

    def derivatives(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.zeros_like(t), torch.full_like(t, self.c)


class SinNoise(udm.Schedule):
    """sigma = c sin(pi t / 2), alpha = sqrt(1 - sigma^2): the blur corruption's ``vp`` noise."""

    name = "sin_noise"

    def __init__(self, c: float) -> None:
        self.c = c

    def amplitudes(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        s = self.c * torch.sin(0.5 * math.pi * t)
        return (1 - s * s).clamp_min(0).sqrt(), s


def _pair(reg, noise: str, sigma: float, prediction: str = "x0"):
    schedule = NoiseRamp(sigma) if noise == "linear" else SinNoise(sigma)
    builtin = reg.create("corruption", "blur", noise=noise, sigma=sigma, prediction=prediction)
    chained = reg.create("corruption", "chain", prediction=prediction,
                         parts=[{"name": "blur", "sigma": 0.0}, {"name": "gaussian", "schedule": schedule,
                                                                "prediction": "x0"}])
    return builtin, chained


def _close(a, b, what):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
    else:
        assert abs(a - b) <= TOL, (what, a, b)


GRID = torch.tensor([1.0, 0.97, 0.8, 0.55, 0.3, 0.1, 0.02, 1e-3, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("noise, sigma", [("linear", 0.1), ("linear", 0.5), ("vp", 1.0), ("vp", 0.3)])
def test_chain_of_blur_and_noise_equals_blurring_diffusion_in_every_derived_quantity(reg, noise, sigma):
    builtin, chained = _pair(reg, noise, sigma)
    assert isinstance(chained, LinearChain) and type(chained.basis) is type(builtin.basis)
    assert udm.capabilities(chained) == udm.capabilities(builtin) - {"fit"} | {"fit"}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    tb, tc = builtin.grid_table(GRID, x), chained.grid_table(GRID, x)
    for f in ("a64", "s64", "da64", "ds64"):
        _close(getattr(tb, f), getattr(tc, f), f"grid_table.{f}")
    rows = lambda tab: (tab.rows(0, len(GRID) - 1), tab.rows(1, len(GRID)))  # noqa: E731
    for name, fn in (("posterior_coefficients", lambda c, tab: c.posterior_coefficients(*rows(tab))),
                     ("refresh_amounts(0.3)", lambda c, tab: c.refresh_amounts(*rows(tab), 0.3)),
                     ("refresh_amounts(1)", lambda c, tab: c.refresh_amounts(*rows(tab), 1.0)),
                     ("sde", lambda c, tab: c.sde(tab)), ("log_snr", lambda c, tab: c.log_snr(tab))):
        for i, (u, v) in enumerate(zip(fn(builtin, tb), fn(chained, tc))):
            _close(u, v, f"{name}[{i}]")
    for mb, mc in zip(builtin.marginals(GRID, x, tb), chained.marginals(GRID, x, tc)):
        x_t = builtin.apply(mb, x, eps)
        _close(x_t, chained.apply(mc, x, eps), f"apply at t = {float(mb.t)}")
        _close(builtin.velocity(mb, x, eps), chained.velocity(mc, x, eps), "velocity")
        if float(mb.s64.min()) > 0:
            _close(builtin.invert_noise(mb, x_t, x), chained.invert_noise(mc, x_t, x), "invert_noise")
            _close(builtin.score(mb, x_t, x), chained.score(mc, x_t, x), "score")
    t = torch.full((3,), 0.4, dtype=torch.float64)
    s = torch.full((3,), 0.15, dtype=torch.float64)
    x_t = builtin.forward(x, eps, t)
    _close(x_t, chained.forward(x, eps, t), "forward")
    _close(builtin.noise_posterior(x_t, x, t), chained.noise_posterior(x_t, x, t), "noise_posterior")
    draw = lambda c: c.posterior(x_t, x, t, s, torch.Generator().manual_seed(5))  # noqa: E731
    _close(draw(builtin), draw(chained), "posterior (same generator)")
    out = torch.randn(x.shape, generator=g, dtype=torch.float64)
    _close(builtin.to_x0(out, x_t, t), chained.to_x0(out, x_t, t), "to_x0")
    _close(builtin.target(x, eps, t), chained.target(x, eps, t), "target")
    _close(builtin.training_loss(out, x, eps, x_t, t), chained.training_loss(out, x, eps, x_t, t), "training_loss")
    fit_data = torch.randn(20, 2, 8, 8, generator=g, dtype=torch.float64)
    builtin.fit(fit_data), chained.fit(fit_data)  # the blur prior's density needs fitted statistics
    assert torch.isfinite(builtin.prior_logp(x_t)).all()
    with pytest.raises(udm.CapabilityError, match=r"corruption chain: prior_logp needs a first part whose prior is "
                                                  r"N\(0, s\(1\)\^2\) per coefficient; got 'blur', which has a prior"):
        chained.prior_logp(x_t)  # blur's fitted prior pushed through the noise: not the default density


def test_the_v_target_and_its_weighting_agree_too(reg):
    builtin = reg.create("corruption", "blur", noise="vp", sigma=1.0, prediction="v", weighting="min_snr")
    chained = reg.create("corruption", "chain", prediction="v", weighting="min_snr",
                         parts=[{"name": "blur", "sigma": 0.0}, {"name": "gaussian", "schedule": SinNoise(1.0)}])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    eps, out = torch.randn(x.shape, generator=g, dtype=torch.float64), torch.randn(x.shape, generator=g,
                                                                                     dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2, 0.01], dtype=torch.float64)
    x_t = builtin.forward(x, eps, t)
    _close(builtin.target(x, eps, t), chained.target(x, eps, t), "v target")
    _close(builtin.to_x0(out, x_t, t), chained.to_x0(out, x_t, t), "x0 from v")
    _close(builtin.training_loss(out, x, eps, x_t, t), chained.training_loss(out, x, eps, x_t, t), "min-SNR loss")


def test_chain_prior_is_the_first_parts_prior_pushed_through_the_rest(reg):
    """The fitted channel means of the blur part, then the Gaussian part's forward at t = 1: in law the built-in
    blur prior (same mean; the noise is the chain's sigma_1)."""
    builtin, chained = _pair(reg, "vp", 0.5)
    data = torch.randn(256, 2, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.3 + torch.tensor([0.5, -1.0])[
        :, None, None]
    builtin.fit(data)
    chained.fit(data)
    assert set(chained.state_dict()) == {"0.channel_mean", "0.channel_cov"}
    a = builtin.sample_prior((4000, 2, 8, 8), torch.Generator().manual_seed(3), dtype=torch.float64)
    b = chained.sample_prior((4000, 2, 8, 8), torch.Generator().manual_seed(4), dtype=torch.float64)
    n = a.shape[0]
    for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3))):  # channel means and pixel spread per image
        sa, sb = stat(a), stat(b)
        se = (sa.var(0) / n + sb.var(0) / n).sqrt()
        assert bool(((sa.mean(0) - sb.mean(0)).abs() < 5 * se).all()), (sa.mean(0), sb.mean(0))
    clone = copy.deepcopy(chained)
    again = reg.create("corruption", "chain", parts=[{"name": "blur", "sigma": 0.0}, {"name": "gaussian",
                                                                                      "schedule": SinNoise(0.5)}])
    again.load_state_dict(clone.state_dict())
    torch.testing.assert_close(again.parts[0].state_dict()["channel_mean"], builtin.state_dict()["channel_mean"])


def test_chain_of_blur_and_noise_passes_the_kit_for_every_sampler_it_offers(reg):
    """blur_max = 2 pixels: the fastest mode decays to e^-30, not to 0 (where the kit's closed-form references
    divide by a_s = 0), and its decay rate stays small enough for 20 ODE steps per chain."""
    chained = reg.create("corruption", "chain", parts=[{"name": "blur", "sigma": 0.0, "blur_max": 2.0},
                                                       {"name": "gaussian", "schedule": NoiseRamp(0.2)}])
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    chained.fit(torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + x0)
    offered = udm.supported_samplers(chained, reg)
    assert {"ddpm", "ddim", "posterior", "heun", "rk4", "euler", "cold", "naive", "refresh"} <= set(offered)
    skip = {"prior": "blur_max = 2 leaves D_1(x_0) apart from the channel mean the blur prior draws (checked below "
                     "with the default blur_max)"}
    # euler is first order: its own, finer grid (as for gaussian in test_conformance_gaussian); the reverse-SDE
    # samplers (weak order 1) are checked on the linear-Gaussian layer by tests/test_sde.py
    sde = {"sde", "euler_maruyama", "reverse_diffusion", "edm", "edm_stochastic"}
    report = assert_conforms(chained, x0, registry=reg, n=1500, samplers=[s for s in offered if s not in {"euler", *sde}],
                             fine_steps=20, time_type=reg.create("time", "continuous"), skip=skip,
                             sampler_options={"adaptive": {"rtol": 1e-5, "atol": 1e-5}})  # its tolerance is its grid
    assert set(report.samplers) | {"euler"} | sde >= set(offered)
    assert_conforms(chained, x0, registry=reg, n=1500, samplers=["euler"], fine_steps=400, skip=skip,
                    chains=[[0.7, 0.3]])
    full = _pair(reg, "linear", 0.2)[1]  # the default blur_max: fully blurred at t = 1
    full.fit(torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + x0)
    assert_conforms(full, x0, registry=reg, n=1500, skip=("marginal", "joint"))


def test_a_chain_of_isotropic_parts_has_the_composed_schedule(reg):
    """gaussian(linear) then gaussian(cosine): alpha = a1 a2, sigma^2 = a2^2 s1^2 + s2^2; the kit checks the
    declared schedule (and its derivatives, against central differences) against forward."""
    chained = reg.create("corruption", "chain", parts=[{"name": "gaussian", "schedule": "linear"},
                                                       {"name": "gaussian", "schedule": "cosine"}], prediction="v")
    t = torch.tensor([0.0, 0.2, 0.7, 0.999], dtype=torch.float64)
    s1, s2 = (udm.registry().create("schedule", n)(t) for n in ("linear", "cosine"))
    sch = chained.schedule(t)
    _close(sch.alpha, s1.alpha * s2.alpha, "alpha")
    _close(sch.sigma, (s2.alpha**2 * s1.sigma**2 + s2.sigma**2).sqrt(), "sigma")
    assert "schedule" in udm.capabilities(chained)
    assert_conforms(chained, torch.tensor([[0.5, -1.0, 2.0]]), registry=reg, n=1500, samplers=["ddim", "ddpm"])


def test_mask_then_noise_offers_what_is_exact_and_refuses_the_rest_with_the_reason(reg):
    chained = reg.create("corruption", "chain", parts=[{"name": "mask_pixels", "fill": -2.0}, "gaussian"])
    assert isinstance(chained, GeneralChain)
    assert udm.capabilities(chained) == {"refresh_noise"}
    assert udm.supported_samplers(chained, reg) == ["naive", "renoise"]
    x0 = torch.tensor([[0.5, -0.7, 1.1, 0.2, -0.3, 0.9]])
    report = assert_conforms(chained, x0, registry=reg, n=2000)
    assert report.samplers == ["renoise"] and set(report.unsupported) == {"invert", "refresh", "residual", "ode",
                                                                          "posterior"}
    assert "refresh_noise_preserves_q" in {r.name for r in report.results}  # the parts' noises, as one mapping
    net = lambda x_t, t, g=None: x0.expand_as(x_t)  # noqa: E731
    with pytest.raises(CapabilityError, match=r"sampler 'ddim': corruption 'chain' must offer noise_posterior; it "
                                              r"lacks noise_posterior \(p\(eps_1, \.\.\., eps_n \| x_t, x_0\) needs "
                                              r"the law of the intermediate states given x_t; part 'mask_pixels' is "
                                              r"not linear-Gaussian"):
        udm.sample(net, chained, reg.create("time", "continuous"), shape=(4, 6), sampler="ddim", steps=3)


def test_parts_diagonal_in_different_bases_make_a_general_chain(reg):
    """blur (DCT) then pixelate (Haar): each linear-Gaussian, their composition is not diagonal in one basis."""
    chained = reg.create("corruption", "chain", parts=[{"name": "blur", "sigma": 0.0}, "pixelate"])
    assert isinstance(chained, GeneralChain)
    notes = udm.corruption.capability_notes(chained)
    assert "the parts are diagonal in different bases (DCT2, Haar2)" in notes["linear_gaussian"]


def test_bad_chains_are_clear_errors(reg):
    with pytest.raises(ConfigError, match=r"corruption chain: parts\[1\] must accept what parts\[0\] \('mask'\) "
                                          r"produces, data of kind 'tokens'; got 'gaussian', which takes data of kind "
                                          r"'continuous'\. Reorder the parts"):
        reg.create("corruption", "chain", parts=[{"name": "mask", "vocab_size": 4}, "gaussian"])
    with pytest.raises(ConfigError, match=r"corruption chain: parts must be a list of at least two corruptions"):
        reg.create("corruption", "chain", parts=["gaussian"])
    with pytest.raises(ConfigError, match=r"corruption chain: prediction and weighting must be 'x0' and 'none' for a "
                                          r"chain that is not linear-Gaussian"):
        reg.create("corruption", "chain", parts=["mask_pixels", "gaussian"], prediction="v")
    with pytest.raises(udm.UnknownPluginError, match=r"corruption chain: parts\[0\]: corruption 'gausian': name must be a "
                                          r"registered corruption"):
        reg.create("corruption", "chain", parts=["gausian", "gaussian"])


def test_a_latent_corruption_can_start_a_chain(reg):
    """The latent corruption turns tokens into vectors: a continuous corruption may follow it."""
    chained = reg.create("corruption", "chain", parts=[{"name": "latent", "encoder": {"name": "embedding",
                                                                                      "vocab_size": 5, "dim": 3}},
                                                       "gaussian"])
    x0 = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(0))
    eps = chained.sample_noise(x0, torch.Generator().manual_seed(1))
    x_t = chained.forward(x0, eps, torch.full((6,), 0.5, dtype=torch.float64))
    assert x_t.shape == (6, 4, 3) and x_t.is_floating_point() and chained.data_kind == "tokens"
    assert isinstance(chained, GeneralChain)  # linear-Gaussian in the latents only: latent(inner=chain(...)) is
    assert "latent corruption's inner corruption may be a chain" in udm.corruption.capability_notes(chained)[
        "linear_gaussian"]
