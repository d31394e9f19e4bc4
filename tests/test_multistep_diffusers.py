"""udm's multistep solvers equal diffusers' schedulers step by step, on the same grid and initial noise.

The exact Gaussian-mixture denoiser E[x_0 | x_t] is the model on both sides (diffusers with
``prediction_type="sample"``), float64, on diffusers' own alpha-bar table (udm's ``table`` schedule). udm's
``discrete`` time with T = 1000 and the uniform grid visits n = 1000, 1000 - 1000/N, ..., which is diffusers'
``timestep_spacing="trailing"`` shifted by one (udm's n = diffusers' index + 1; benchmarks/bench_samplers.py).
diffusers computes its DPM-Solver steps in float32, so the two agree to ~1e-6 there, not 1e-13 (its float32
sigma table is recomputed in float64 below); the issue's bound is 1e-5. A wrong weight moves the trajectory by
1e-3 or more (the ``3m`` case shows the size of a real formula difference).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import udm
from udm.testing import GaussianMixture

diffusers = pytest.importorskip("diffusers", reason="diffusers is the reference implementation of DPM-Solver++, "
                                                    "UniPC and DEIS; install the test extra: pip install -e '.[test]'")

MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.2)
T = 1000
SCHED = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="sample",
             timestep_spacing="trailing")


@pytest.fixture(scope="module")
def setup(reg):
    abar = diffusers.DDPMScheduler(**{k: v for k, v in SCHED.items() if k != "timestep_spacing"}).alphas_cumprod
    corr = reg.create("corruption", "gaussian", schedule={"name": "table", "alphas_cumprod": abar.double().tolist()})
    return corr, reg.create("time", "discrete", steps=T), abar.double()


def diffusers_run(cls, steps, x, abar, noise=None, **kw):
    """diffusers' set_timesteps / step loop with the exact denoiser; the state after every step."""
    sched = cls(**SCHED, **kw)
    sched.set_timesteps(steps)
    # diffusers rounds its sigmas to float32; recompute the same table entries in float64 (its DEIS coefficients
    # cancel to 1e-5 in float32). Its DPM-Solver step still runs in float32.
    exact = ((1 - abar) / abar).sqrt()
    sched.sigmas = torch.cat([exact[sched.timesteps], exact[:1] if sched.sigmas[-1] > 0 else torch.zeros(1)])
    out = []
    for k, t in enumerate(sched.timesteps):
        a = abar[int(t)]
        x0 = MIX.posterior_mean(x, a.sqrt().expand(len(x)), (1 - a).sqrt().expand(len(x)))
        extra = {} if noise is None else {"variance_noise": noise[k] if k < len(noise) else torch.zeros_like(x)}
        x = sched.step(x0, t, x, **extra).prev_sample
        out.append(x)
    return torch.stack(out), sched


CASES = [  # (udm sampler, its options, diffusers scheduler, its options, steps compared)
    ("dpm++2m", {}, "DPMSolverMultistepScheduler", {}, "all"),
    ("dpm++2m_sde", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "all"),
    ("unipc", {}, "UniPCMultistepScheduler", {}, "all"),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}, "all"),
    # diffusers' bh1 ends in NaN: its corrector at the last step multiplies B(h) = -h = -inf by 0 (the corrected
    # state is then discarded, but 0 * NaN is not); every step before the last agrees
    ("unipc", {"variant": "bh1"}, "UniPCMultistepScheduler", {"solver_type": "bh1"}, "but_last"),
    # diffusers' DEIS stops at its smallest noise level instead of t = 0: every step before the last agrees
    ("deis", {"order": 2}, "DEISMultistepScheduler", {"solver_order": 2}, "but_last"),
    ("deis", {"order": 3}, "DEISMultistepScheduler", {"solver_order": 3}, "but_last"),
]


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
def test_multistep_equals_diffusers_at_every_step(setup, reg, case, steps):
    corr, time, abar = setup
    name, opts, cls_name, kw, compare = case
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    noise = None
    if "sde" in name:  # the same draws: udm takes one randn per step before the last, from its generator
        g = torch.Generator().manual_seed(7)
        noise = [torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(steps - 1)]
    want, sched = diffusers_run(getattr(diffusers, cls_name), steps, x_T.clone(), abar, noise, **kw)
    grid = time.grid(steps)
    assert torch.equal((sched.timesteps.double() + 1) / T, grid[:-1])  # the same grid, udm's n = index + 1
    got: list = []
    reg.get("sampler", name)(MIX.denoiser(corr), corr, grid, x_T.clone(), generator=torch.Generator().manual_seed(7),
                             callback=got.append, **opts)
    got_x = torch.stack([s.x for s in got])
    upto = steps if compare == "all" else steps - 1
    dev = float((got_x[:upto] - want[:upto]).abs().max())
    print(f"{name} {opts} vs {cls_name} {kw}, {steps} steps: max |udm - diffusers| = {dev:.3g}")
    assert dev <= 1e-5, dev
    assert got[-1].nfe == steps  # one model call per step


def test_dpm3m_differs_from_diffusers_by_its_second_difference_weight(setup, reg):
    """diffusers' 3M weights the second divided difference D2 by phi_3 where the exact integral of a quadratic
    needs 2 phi_3 (udm/samplers/_weights.py); on 10 steps the trajectories differ by far more than 1e-5, and
    the exactness of udm's weights for quadratics is tested in tests/test_multistep.py."""
    corr, time, abar = setup
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want, _ = diffusers_run(diffusers.DPMSolverMultistepScheduler, 10, x_T.clone(), abar, solver_order=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = reg.get("sampler", "dpm++3m")(MIX.denoiser(corr), corr, time.grid(10), x_T.clone())
    assert float((got - want[-1]).abs().max()) > 1e-4
