"""udm.testing's conformance suite on the built-in Gaussian corruption: every schedule, both time
types, every sampler it offers passes the marginal check; and the check has power: deliberately
wrong samplers fail it."""

from __future__ import annotations

import pytest
import torch

import udm
from udm import samplers as S
from udm.testing import assert_conforms, check_corruption, marginal_check

X0 = torch.tensor([[0.8, -1.5, 0.3, 2.0]])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "vp", "ve", "flow"])
@pytest.mark.parametrize("time_name", ["discrete", "continuous"])
def test_every_gaussian_sampler_keeps_the_marginals(reg, schedule, time_name):
    corr = reg.create("corruption", "gaussian", schedule=schedule)
    time = reg.create("time", time_name)
    supported = udm.supported_samplers(corr, reg)
    # Runtime: every sampler on the discrete grids; on the continuous grids the ODE presets euler/rk4/ode
    # repeat the heun check with another solver of the same rule, so only heun runs there.
    names = supported if time_name == "discrete" else [s for s in supported if s not in ("euler", "rk4", "ode")]
    # fine_steps: the ODE samplers are only exact as steps shrink; 50 steps between t = 0.7 and 0.3 put
    # their discretisation error far below what n = 2000 KS tests resolve
    report = assert_conforms(corr, X0, time_type=time, registry=reg, n=2000, fine_steps=50, samplers=names)
    checked = {r.name for r in report.results}
    assert {f"marginal[{s}]" for s in names} <= checked
    assert {"shapes", "determinism", "t0_identity", "noise_posterior_explains_x_t"} <= checked
    assert {"invert", "refresh", "residual", "ode", "posterior", "renoise", "ddim", "ddpm", "heun"} <= set(supported)


# ------------------------------------------------------------- negative controls
def _scaled_invert(scale: float):
    def step(ctx, x, x0, t, s):
        c = ctx.corruption
        return c.forward(x0, scale * c.noise_posterior(x, x0, t, ctx.generator), s)

    def rule(denoiser, corruption, times, x_init, *, generator=None, callback=None):
        return S.sample_loop(step, denoiser, corruption, times, x_init, generator=generator, callback=callback)

    return rule


def _late_renoise(delay: float):
    def step(ctx, x, x0, t, s):
        c = ctx.corruption
        return c.forward(x0, c.sample_noise(x0, ctx.generator), s + delay)

    def rule(denoiser, corruption, times, x_init, *, generator=None, callback=None):
        return S.sample_loop(step, denoiser, corruption, times, x_init, generator=generator, callback=callback)

    return rule


@pytest.mark.parametrize("wrong", [_scaled_invert(1.1), _late_renoise(0.05)], ids=["eps_x1.1", "time+0.05"])
def test_wrong_samplers_fail_the_marginal_check(reg, wrong):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    x0 = torch.randn(1, 16, generator=torch.Generator().manual_seed(0)).expand(4000, 16).contiguous()
    bad = marginal_check(corr, x0, wrong, [0.7, 0.5, 0.3], name="wrong")
    assert not bad.passed, bad.detail
    # the same test with the right rule passes on the same draws
    good = marginal_check(corr, x0, S.invert, [0.7, 0.5, 0.3], name="invert")
    assert good.passed, good.detail


def test_a_broken_corruption_is_reported(reg):
    class Leaky(type(reg.create("corruption", "gaussian"))):
        name = "leaky"

        def forward(self, x0, eps, t):  # 1% of the noise survives at t = 0: F_0 is not the identity
            return super().forward(x0, eps, t) + 0.01 * eps

    report = check_corruption(Leaky(), X0, registry=reg, samplers=["ddim"], n=500)
    assert not report.passed
    # F_0 is not the identity, and the inherited noise posterior no longer explains x_t
    assert [r.name for r in report.failures] == ["t0_identity", "noise_posterior_explains_x_t"]
    with pytest.raises(AssertionError, match=r"(?s)conformance of 'leaky': FAILED\n.*\[FAIL\] t0_identity: forward at "
                                             r"t = 0 is not the identity"):
        assert_conforms(Leaky(), X0, registry=reg, samplers=["ddim"], n=500)
