"""Adaptive probability-flow ODE sampling (``udm.samplers.adaptive``): error control and honest call counts.

The reference is the probability-flow ODE solved by DPM-Solver++(3M) on 2000 steps uniform in log-SNR (third
order, tests/test_multistep.py; its error there is below 1e-8), on the VP schedule from t = 1 to t = 1e-3.
"""

from __future__ import annotations

import pytest
import torch

import udm
from udm import samplers as S
from udm.testing import GaussianMixture

F64 = torch.float64
MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.5)
T_END = 1e-3


class Counting:
    """Wraps a denoiser and counts its calls."""

    def __init__(self, den):
        self.den, self.calls = den, 0

    def __call__(self, x, t, g=None):
        self.calls += 1
        return self.den(x, t)


@pytest.fixture(scope="module")
def setup(reg):
    corr = reg.create("corruption", "gaussian", schedule="vp")
    sch = corr.noise_schedule
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ends = sch.log_snr(torch.tensor([1.0, T_END], dtype=F64))
    grid = sch.t_of_log_snr(torch.linspace(float(ends[0]), float(ends[1]), 2001, dtype=F64))
    grid[0], grid[-1] = 1.0, T_END
    ref = S.multistep(MIX.denoiser(corr), corr, grid, x, order=3, lower_order_final=False)
    return corr, x, ref


@pytest.mark.parametrize("method", ["bs3", "dopri5"])
def test_error_follows_the_tolerance_and_every_call_is_counted(setup, method):
    corr, x, ref = setup
    results = []
    for tol in (1e-3, 1e-5):
        den, steps = Counting(MIX.denoiser(corr)), []
        out = S.adaptive(den, corr, torch.tensor([1.0, T_END], dtype=F64), x, method=method, rtol=tol, atol=tol,
                         callback=steps.append)
        err = float((out - ref).abs().max())
        assert steps[-1].nfe == den.calls and [s.nfe for s in steps] == sorted(s.nfe for s in steps)
        assert [s.index for s in steps] == list(range(len(steps))) and steps[-1].s == T_END
        assert all(a.s == b.t for a, b in zip(steps[:-1], steps[1:]))  # accepted steps chain from 1 to t_end
        results.append((tol, err, den.calls))
        print(f"{method} tol {tol:g}: max error {err:.2e} with {den.calls} model calls")
    (tol0, err0, calls0), (tol1, err1, calls1) = results
    assert err1 < 100 * tol1  # measured 6e-5 (bs3) and 4e-4 (dopri5) at 1e-5: the local test bounds the global error loosely
    assert err1 < err0 / 10 and calls1 > calls0  # tighter tolerance: more calls, smaller error


def test_the_last_step_returns_the_prediction_made_at_the_end_without_another_call(setup):
    corr, x, _ = setup
    den = MIX.denoiser(corr)
    steps: list = []
    S.adaptive(den, corr, torch.tensor([1.0, T_END], dtype=F64), x, callback=steps.append)
    to_zero: list = []
    out = S.adaptive(den, corr, torch.tensor([1.0, 0.5, T_END, 0.0], dtype=F64), x, callback=to_zero.append)
    assert to_zero[-1].nfe == steps[-1].nfe  # the FSAL stage at t_end is the prediction returned
    assert to_zero[-1].s == 0.0 and torch.equal(to_zero[-2].x, steps[-1].x)  # interior grid points are not used
    assert float((out - den(steps[-1].x, torch.full((len(x),), T_END, dtype=F64))).abs().max()) < 1e-12


def test_oracle_x0_gives_the_marginal_path_to_the_tolerance(reg):
    """With x0_hat = x_0 the ODE's solution is x_s = a_s x_0 + s_s eps for the eps that explains x_t."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    x0 = torch.randn(100, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    eps = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    (a1, a2), (s1, s2) = corr.noise_schedule.amplitudes(torch.tensor([0.9, 0.2], dtype=F64))
    out = S.adaptive(udm.testing.FixedDenoiser(x0), corr, torch.tensor([0.9, 0.2], dtype=F64), a1 * x0 + s1 * eps,
                     rtol=1e-7, atol=1e-7)
    assert float((out - (a2 * x0 + s2 * eps)).abs().max()) < 1e-5


def test_adaptive_errors(setup):
    corr, x, _ = setup
    den = MIX.denoiser(corr)
    with pytest.raises(udm.ConfigError, match=r"sampler 'adaptive': method must be one of bs3, dopri5; got 'bs2'\. "
                                              r"Did you mean 'bs3'\?"):
        S.adaptive(den, corr, torch.tensor([1.0, 0.0], dtype=F64), x, method="bs2")
    with pytest.raises(udm.ConfigError, match=r"sampler 'adaptive': the grid must have a time > 0 before t = 0 to "
                                              r"integrate to; got \[1\.0, 0\.0\]\. Use steps >= 2"):
        S.adaptive(den, corr, torch.tensor([1.0, 0.0], dtype=F64), x)
    with pytest.raises(udm.ConfigError, match=r"sampler 'adaptive': rtol and atol must be > 0; got rtol=0, atol=0\.001"):
        S.adaptive(den, corr, torch.tensor([1.0, 0.1], dtype=F64), x, rtol=0)
    with pytest.raises(udm.UdmError, match=r"sampler 'adaptive': the model calls must stay within max_calls=10; got "
                                           r"more at t = .*\. Loosen rtol/atol or raise max_calls\."):
        S.adaptive(den, corr, torch.tensor([1.0, T_END], dtype=F64), x, rtol=1e-8, atol=1e-8, max_calls=10)
    with pytest.raises(udm.ConfigError, match=r"sampler 'adaptive': corrector must be None \(the error control chooses "
                                              r"the steps.*; got 'refresh'\. Use a fixed-grid sampler"):
        udm.registry().get("sampler", "adaptive")(den, corr, torch.tensor([1.0, T_END, 0.0], dtype=F64), x,
                                                  corrector="refresh")
