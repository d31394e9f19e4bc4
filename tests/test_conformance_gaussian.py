"""udm.testing's conformance suite on the built-in Gaussian corruption: every schedule, both time
types, every sampler it offers passes the marginal check; and the check has power: deliberately
wrong samplers fail it."""

from __future__ import annotations

import types

import pytest
import torch

import udm
from udm import samplers as S
from udm.testing import assert_conforms, check_corruption, marginal_check

X0 = torch.tensor([[0.8, -1.5, 0.3, 2.0]])
SDE_SAMPLERS = ("sde", "euler_maruyama", "reverse_diffusion", "edm", "edm_stochastic")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "vp", "ve", "flow"])
@pytest.mark.parametrize("time_name", ["discrete", "continuous"])
def test_every_gaussian_sampler_keeps_the_marginals(reg, schedule, time_name):
    corr = reg.create("corruption", "gaussian", schedule=schedule)
    time = reg.create("time", time_name)
    supported = udm.supported_samplers(corr, reg)
    # Runtime: the ODE presets euler/rk4/ode repeat the heun check with another solver of the same rule (one
    # jvp of the schedule per stage and step), so heun stands for them here; test_ode_solvers runs them.
    # The reverse-SDE samplers (weak order 1) need finer grids: tests/test_sde.py runs the kit on them.
    names = [s for s in supported if s not in ("euler", "rk4", "ode", *SDE_SAMPLERS)]
    # fine_steps: the ODE samplers are only exact as steps shrink; 20 steps per chain put heun's (second-order)
    # error below what n = 2000 KS tests resolve, except for ve, whose sigma grows 2000-fold over the 3-step
    # chain 0.95 -> 0.05 (heun at 20 steps: KS D = 0.095 vs critical 0.085)
    # adaptive: its tolerance plays the part of fine_steps (at the default 1e-3 the end of the chain 0.115 -> 0.012
    # on the linear schedule is off by 0.02, which n = 2000 KS tests resolve; at 1e-5 by 4e-4)
    report = assert_conforms(corr, X0, time_type=time, registry=reg, n=2000, fine_steps=50 if schedule == "ve" else 20,
                             samplers=names, sampler_options={"adaptive": {"rtol": 1e-5, "atol": 1e-5}})
    checked = {r.name for r in report.results}
    # the kit judges the joint law of single steps of the core rules; a multistep solver's single step is DDIM's
    # (tests/test_multistep.py), the adaptive ODE's an integration to a tolerance
    joint = [s for s in names if reg.get("sampler", s).rule not in (S.multistep, S.adaptive)]
    assert {f"marginal[{s}]" for s in names} | {f"joint[{s}]" for s in joint} <= checked
    assert {"shapes", "determinism", "t0_identity", "noise_posterior_explains_x_t", "noise_posterior_law",
            "refresh_noise_preserves_q", "schedule_matches_forward", "prior"} <= checked
    assert {"invert", "refresh", "residual", "ode", "posterior", "renoise", "ddim", "ddpm", "heun"} <= set(supported)


@pytest.mark.parametrize("solver, fine_steps", [("euler", 400), ("rk4", 20)])
def test_ode_solvers(reg, solver, fine_steps):
    """Euler is first order: its path error near t = 1 shows in the joint statistic |x_s - x_t| unless the
    steps are small (50 steps per chain: D = 0.54 on the DDPM schedule); rk4 is exact to KS resolution at 20."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    assert_conforms(corr, X0, time_type=reg.create("time", "continuous"), registry=reg, n=2000,
                    fine_steps=fine_steps, samplers=[solver])


def test_the_default_sampler_set_is_pinned(reg):
    """By default the kit checks the six core rules the corruption supports, whatever else is installed, and
    says so; presets and third-party samplers run only when named (or with samplers="all")."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    first = report = check_corruption(corr, X0, registry=reg, n=300, skip=("marginal", "joint"))
    report_samplers = report.samplers
    assert report.samplers == ["renoise", "invert", "refresh", "residual", "ode", "posterior"]
    assert "samplers checked: renoise, invert, refresh, residual, ode, posterior" in str(report)
    mask = reg.create("corruption", "mask", vocab_size=4)
    report = check_corruption(mask, torch.tensor([[0, 1, 2, 3]]), registry=reg, n=300, skip=("marginal", "joint"))
    assert report.samplers == ["renoise", "invert", "refresh"]
    assert report.unsupported == {"residual": "vector_space", "ode": "vector_space", "posterior": "posterior"}
    assert "sampler posterior not checked: the corruption lacks posterior" in str(report)
    wide = check_corruption(mask, torch.tensor([[0, 1, 2, 3]]), registry=reg, n=300, samplers="all",
                            skip=("marginal", "joint"))
    assert {"confidence", "maskgit"} <= set(wide.samplers)
    # another installed sampler plugin does not change the default set
    local = udm.load_registry()

    @udm.hookimpl
    def udm_register_samplers(register):
        register(udm.SamplerSpec("extra", S.invert, ("noise_posterior",), {}, "a third-party preset"))

    local.add_plugin(types.SimpleNamespace(udm_register_samplers=udm_register_samplers), name="extra")
    assert "extra" in udm.supported_samplers(corr, local)
    again = check_corruption(corr, X0, registry=local, n=300, skip=("marginal", "joint"))
    assert again.samplers == report_samplers == ["renoise", "invert", "refresh", "residual", "ode", "posterior"]
    assert [r.name for r in again.results] == [r.name for r in first.results]


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
    # F_0 is not the identity, the inherited noise posterior no longer explains x_t (nor is it distributed as
    # q), forward disagrees with the inherited schedule, and ddim no longer lands on F_s(x_0, eps)
    assert {r.name for r in report.failures} == {"t0_identity", "noise_posterior_explains_x_t", "noise_posterior_law",
                                                 "schedule_matches_forward", "joint[ddim]"}
    with pytest.raises(AssertionError, match=r"(?s)conformance of 'leaky': FAILED .*\[FAIL\] t0_identity: forward at "
                                             r"t = 0 is not the identity"):
        assert_conforms(Leaky(), X0, registry=reg, samplers=["ddim"], n=500)


def test_option_errors(reg):
    corr = reg.create("corruption", "gaussian")
    with pytest.raises(ValueError, match=r"check_corruption: skip must name checks \(shapes, .*\); got 'priro'\. "
                                         r"Did you mean 'prior'"):
        check_corruption(corr, X0, registry=reg, skip=("priro",))
    with pytest.raises(ValueError, match=r"check_corruption: chains must be strictly decreasing lists of at least two "
                                         r"times in \(0, 1\]; got \[0.3, 0.0\]\. End every chain above 0"):
        check_corruption(corr, X0, registry=reg, chains=[[0.3, 0.0]])
