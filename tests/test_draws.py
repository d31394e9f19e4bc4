"""The sampler option ``draws``: where a q_theta with a variance is drawn from (docs/math.md, "The last step").

On a Gaussian data law N(0, v I) the exact posterior is Gaussian, so with the exact q_theta
(``GaussianMixture.q_theta(corruption, "posterior")``) closed forms say what every mode gives:

* ``all`` on DDPM's steps is exact ancestral sampling: the samples are N(0, v I) whatever the grid;
* ``steps`` (the default) ends with the posterior mean at t_{N-1}: per coordinate its variance is
  v a^2 v / (a^2 v + s^2), the spread the last step's mean removes;
* ``last`` steps with the mean (the states are the plain mean run's, bit for bit) and draws once at the end.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import CapabilityError, ConfigError
from udm.testing import GaussianMixture

V = 0.49  # the data law's variance per coordinate
N, D = 20_000, 4


@pytest.fixture(scope="module")
def setup(reg):
    law = GaussianMixture(torch.zeros(1, D, dtype=torch.float64), torch.tensor([math.sqrt(V)]), torch.ones(1))
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    return law, corr, reg.create("time", "continuous")


def _run(reg, law, corr, tt, sampler, draws, callback=None, variance="posterior"):
    return udm.sample(law.q_theta(corr, variance) if variance else law.denoiser(corr), corr, tt, shape=(N, D),
                      sampler=sampler, steps=3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                      registry=reg, draws=draws, callback=callback)


def _var_bounds(var: float) -> tuple[float, float]:
    """Five standard errors of a sample variance of N * D normal values around ``var``."""
    se = var * math.sqrt(2 / (N * D))
    return var - 5 * se, var + 5 * se


def test_all_is_exact_ancestral_sampling_and_steps_ends_with_the_mean(setup, reg):
    law, corr, tt = setup
    lo, hi = _var_bounds(V)
    exact = _run(reg, law, corr, tt, "ddpm", "all")
    assert lo < float(exact.var()) < hi and abs(float(exact.mean())) < 5 * math.sqrt(V / (N * D))
    # the default ends with E[x_0 | x_{t_{N-1}}]: its variance is v a^2 v / (a^2 v + s^2) (x_{t_{N-1}} exact)
    t_last = float(tt.grid(3, spacing="uniform", corruption=corr)[-2])
    a, s = (float(c) for c in corr.noise_schedule.amplitudes(torch.tensor([t_last], dtype=torch.float64)))
    shrunk = V * a * a * V / (a * a * V + s * s)
    lo, hi = _var_bounds(shrunk)
    assert lo < float(_run(reg, law, corr, tt, "ddpm", "steps").var()) < hi < V


def test_last_steps_with_the_mean_and_draws_once_at_the_end(setup, reg):
    law, corr, tt = setup
    seen: dict[str, list[torch.Tensor]] = {"mean": [], "last": []}
    plain = _run(reg, law, corr, tt, "dpm++2m", "steps", lambda st: seen["mean"].append(st.x.clone()), variance=None)
    drawn = _run(reg, law, corr, tt, "dpm++2m", "last", lambda st: seen["last"].append(st.x.clone()))
    for a, b in zip(seen["mean"][:-1], seen["last"][:-1]):  # every state before the last step: the mean run's
        assert torch.equal(a, b)
    # the last step adds a draw of N(0, Var[x_0 | x_{t_{N-1}}]) to the mean the plain run returns
    t_last = float(tt.grid(3, spacing="uniform", corruption=corr)[-2])
    a, s = (float(c) for c in corr.noise_schedule.amplitudes(torch.tensor([t_last], dtype=torch.float64)))
    lo, hi = _var_bounds(V * s * s / (a * a * V + s * s))
    assert lo < float((drawn - plain).var()) < hi


def test_draws_need_a_variance_and_a_known_mode(setup, reg):
    law, corr, tt = setup
    with pytest.raises(CapabilityError, match=r"sampler option draws='last': the last step draws from q_theta, so the "
                                              r"denoiser must give q_theta a variance; got a prediction without one"):
        _run(reg, law, corr, tt, "dpm++2m", "last", variance=None)
    with pytest.raises(CapabilityError, match=r"sampler option draws='all': the last step draws from q_theta"):
        _run(reg, law, corr, tt, "ddim", "all", variance=None)
    with pytest.raises(ConfigError, match=r"udm\.sample: draws must be one of 'steps', 'last', 'all' \(where "
                                          r"q_theta's variance is drawn from\); got 'end'"):
        _run(reg, law, corr, tt, "dpm++2m", "end")
    spec = reg.get("sampler", "ddim")
    with pytest.raises(ConfigError, match=r"sampler 'ddim': draws must be one of"):
        spec(law.denoiser(corr), corr, tt.grid(3), torch.zeros(2, D, dtype=torch.float64), draws=1)
    # a grid that never reaches t = 0 has no last step to draw on: refused, not silently the mean run
    with pytest.raises(ConfigError, match=r"sampler option draws='last': the grid must end at t = 0 \(the last step, "
                                          r"which draws\); got a grid ending at t = 0\.1\. Append 0 to times"):
        spec(law.q_theta(corr, "posterior"), corr, torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64),
             torch.zeros(2, D, dtype=torch.float64), draws="last")


def test_draws_refused_for_a_q_theta_without_a_mean(reg):
    """Categorical q_theta (masking): x0_hat is already a draw; draws='last' is refused with the fix that works."""
    torch.manual_seed(0)
    corr = reg.create("corruption", "mask", vocab_size=5)
    net = reg.create("model", "transformer", vocab_size=6, max_length=8, width=16, depth=1, heads=2)
    tt = reg.create("time", "discrete", steps=20)
    with pytest.raises(CapabilityError, match=r"sampler option draws='last': draws other than 'steps' apply to a "
                                              r"q_theta with a mean and a variance .*has no mean .*Use draws='steps'"):
        udm.sample(net, corr, tt, shape=(2, 8), sampler="invert", steps=3, generator=torch.Generator().manual_seed(0),
                   registry=reg, draws="last")


def test_draws_end_with_the_call(setup, reg):
    """A call's draws do not outlive it: the next call without draws= steps with q_theta's draws again."""
    law, corr, tt = setup
    g = torch.Generator().manual_seed(3)
    x_init = torch.randn(8, D, generator=g, dtype=torch.float64)
    spec, grid = reg.get("sampler", "ddim"), tt.grid(3)

    def call(**kw):
        return spec(law.q_theta(corr, "posterior"), corr, grid, x_init, generator=torch.Generator().manual_seed(4), **kw)

    default = call()
    call(draws="last")
    assert torch.equal(call(), default)
    assert not torch.equal(call(draws="last"), default)


def test_a_decorated_rule_called_directly_checks_draws(setup):
    """A rule called without its SamplerSpec (udm.samplers.invert) checks draws= itself."""
    law, corr, tt = setup
    with pytest.raises(ConfigError, match=r"sampler rule 'invert': draws must be one of 'steps', 'last', 'all'"):
        udm.samplers.invert(law.denoiser(corr), corr, tt.grid(3), torch.zeros(2, D, dtype=torch.float64), draws="x")


def test_a_network_without_a_variance_is_refused_before_any_call(setup, reg):
    """udm.sample(network, draws='last') without variance= names the argument before the network runs."""
    _, corr, tt = setup
    calls = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            calls.append(1)
            return x * self.w

    for draws in ("last", "all"):
        with pytest.raises(ConfigError, match=rf"udm\.sample: draws='{draws}' draws x_0 from q_theta, so variance must "
                                              r"be given .*got variance=None\. Pass variance=\.\.\. .*or draws='steps'"):
            udm.sample(Net(), corr, tt, shape=(3, D), sampler="dpm++2m", steps=3, registry=reg, draws=draws)
    assert calls == []
    table = udm.VarianceTable(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.1, 0.1],
                                                                                            dtype=torch.float64),
                              interpolate=True)
    out = udm.sample(Net(), corr, tt, shape=(3, D), sampler="dpm++2m", steps=3, registry=reg, draws="last",
                     variance=table, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, D) and len(calls) == 3


class _Net(torch.nn.Module):
    """x0 prediction 1.5 + tanh(x), in (0.5, 2.5): bends, and mostly leaves [-1, 1] (clamp=True changes it)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, x, t):
        return 1.5 + self.w * torch.tanh(x)


def _net_run(reg, corr, tt, draws, variance, callback=None, extras=False, clamp=False, sampler="ddim"):
    den = udm.Denoiser(_Net(), corr, tt, variance=variance, extras=extras)
    return udm.sample(den, corr, tt, shape=(N, D), sampler=sampler, steps=4, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64, registry=reg, draws=draws, callback=callback, clamp=clamp)


def _table(value: float) -> udm.VarianceTable:
    return udm.VarianceTable(torch.tensor([0.0, 1.0], dtype=torch.float64),
                             torch.tensor([value, value], dtype=torch.float64), interpolate=True)


def test_last_steps_with_the_mean_whatever_the_prediction_carries(setup, reg, monkeypatch):
    """With extras=True a prediction carries eps_hat and the score of its draw; under draws='last' a rule (one that
    reads them, as a user's may) never sees the draw's: they are None, and x0_hat is the mean."""
    from udm.samplers import Sampling

    _, corr, tt = setup
    seen = []
    predict = Sampling.predict
    monkeypatch.setattr(Sampling, "predict", lambda run, x, where: seen.append(predict(run, x, where)) or seen[-1])
    den = udm.Denoiser(_Net(), corr, tt, variance=_table(0.2), extras=True)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    udm.samplers.invert(den, corr, tt.grid(3), x, generator=torch.Generator().manual_seed(1))
    assert len(seen) == 3 and all(p.eps_hat is not None and p.score is not None for p in seen)  # filled for the draw
    seen.clear()
    udm.samplers.invert(den, corr, tt.grid(3), x, generator=torch.Generator().manual_seed(1), draws="last")
    assert len(seen) == 3 and all(p.eps_hat is None and p.score is None and torch.equal(p.x0_hat, p.mean)
                                  and p.draw is not None for p in seen)


def test_a_clamped_last_draw_is_the_clamped_mean_plus_the_noise(setup, reg):
    """clamp=True clamps q_theta's mean and keeps the draw's noise (Analytic-DPM): the last draw minus the clamped
    mean run's output is N(0, Sigma) noise, with Sigma the table's value."""
    _, _, tt = setup
    corr = reg.create("corruption", "gaussian", schedule="cosine", prediction="x0", data_range=[-1.0, 1.0])
    plain = _net_run(reg, corr, tt, None, None, clamp=True)
    drawn = _net_run(reg, corr, tt, "last", _table(0.2), clamp=True)
    assert float(plain.abs().max()) <= 1.0 and float((plain > 0.999).double().mean()) > 0.5  # the clamp bites
    noise = drawn - plain
    lo, hi = _var_bounds(0.2)
    assert lo < float(noise.var()) < hi and abs(float(noise.mean())) < 5 * math.sqrt(0.2 / (N * D))
