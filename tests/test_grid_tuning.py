"""Tuned sampling grids (``udm.tune_grid``) and explicit grids (``udm.sample(..., times=...)``).

The model is the exact posterior mean of a 2-D ring of 8 Gaussians (udm.testing), so the probability-flow ODE's
solution is the only target and every error is the grid's. The claims: tuning never ends worse than the best fixed
spacing on its pilot batch, and the tuned grid is better on fresh prior draws too (it learned the model, not the
pilot); the grid runs through ``udm.sample`` unchanged; bad requests are refused with the reason.
"""

from __future__ import annotations

import pytest
import torch

import udm
from udm import samplers as S
from udm.testing import GaussianMixture

F64 = torch.float64
MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.2)
STEPS = 5


@pytest.fixture(scope="module")
def setup(reg):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    tt = reg.create("time", "continuous")
    den = MIX.denoiser(corr)
    tuned = udm.tune_grid(den, corr, tt, steps=STEPS, shape=(256, 2), sampler="dpm++2m",
                          generator=torch.Generator().manual_seed(0), sweeps=1, points=4, registry=reg)
    return corr, tt, den, tuned


def _distance(den, corr, times, x, ref):
    out = S.multistep(den, corr, times, x, order=2)
    return float((out - ref).pow(2).mean(1).sqrt().mean())


def test_tuning_never_ends_worse_than_the_best_fixed_spacing_on_its_pilot(setup):
    corr, tt, den, tuned = setup
    assert set(tuned.errors) == set(udm.grid_tuning.START_SPACINGS)
    assert tuned.start_error == min(tuned.errors.values()) == tuned.errors[tuned.start]
    assert tuned.error == tuned.sweeps[-1] < tuned.start_error
    times = tuned.times
    assert times.dtype == F64 and len(times) == STEPS + 1 and float(times[-1]) == 0.0
    assert bool((times[1:] < times[:-1]).all()) and float(times[-2]) >= tt.t_min
    assert float(times[0]) == float(tt.grid(STEPS, spacing=tuned.start, corruption=corr)[0])  # t_0 is kept
    spent = tuned.calls - tuned.reference_calls  # every evaluation runs the whole grid on the pilot
    assert spent % STEPS == 0 and spent > STEPS * (len(tuned.errors) + 1)
    assert tuned.reference_calls > 50 and tuned.pilot == 256 and tuned.sampler == "dpm++2m"


def test_the_tuned_grid_is_better_on_fresh_prior_draws(setup, reg):
    """Generalisation: 1000 prior draws the tuning never saw, each solved to 1e-7 by the adaptive ODE sampler."""
    corr, tt, den, tuned = setup
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(123), dtype=F64)
    t0 = float(tuned.times[0])
    assert t0 == 1.0  # cosine's prior at t = 1 is N(0, I)
    ref = S.adaptive(den, corr, torch.tensor([1.0, tt.t_min, 0.0], dtype=F64), x, method="dopri5", rtol=1e-7,
                     atol=1e-7)
    fixed = {name: _distance(den, corr, tt.grid(STEPS, spacing=name, corruption=corr), x, ref)
             for name in ("uniform", "quadratic")}
    got = _distance(den, corr, tuned.times, x, ref)
    print(f"fresh draws: tuned {got:.4f}, fixed {fixed}")
    assert got < 0.75 * min(fixed.values())


def test_sample_runs_an_explicit_grid_as_given(setup):
    corr, tt, den, tuned = setup
    seen: list[float] = []
    out = udm.sample(den, corr, tt, shape=(64, 2), sampler="dpm++2m", times=tuned,
                     generator=torch.Generator().manual_seed(5), dtype=F64, callback=lambda s: seen.append(s.t))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    direct = S.multistep(den, corr, tuned.times, x, order=2)
    assert torch.allclose(out, direct, atol=1e-12, rtol=0)
    assert seen == tuned.times[:-1].tolist()
    listed = udm.sample(den, corr, tt, shape=(64, 2), sampler="dpm++2m", times=tuned.times.tolist(),
                        generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.equal(listed, out)


def test_a_tuned_grid_runs_only_with_the_sampler_it_was_tuned_for(setup):
    """udm.sample's default sampler is 'invert', tune_grid's 'dpm++2m': the grid names its sampler and is refused
    by any other (its plain times still run anywhere)."""
    corr, tt, den, tuned = setup
    with pytest.raises(udm.ConfigError, match=r"udm.sample: sampler must be the one times was tuned for, 'dpm\+\+2m' "
                                              r"with options \{\}.* got 'invert' with options \{\}. Pass "
                                              r"sampler=tuned.sampler"):
        udm.sample(den, corr, tt, shape=(4, 2), times=tuned)
    with pytest.raises(udm.ConfigError, match=r"got 'dpm\+\+2m' with options \{'lower_order_final': False\}"):
        udm.sample(den, corr, tt, shape=(4, 2), sampler="dpm++2m", lower_order_final=False, times=tuned)
    out = udm.sample(den, corr, tt, shape=(4, 2), times=tuned.times, dtype=F64)
    assert out.shape == (4, 2) and bool(torch.isfinite(out).all())


def test_discrete_time_tuned_grids_lie_on_the_lattice(reg):
    corr = reg.create("corruption", "gaussian", schedule="linear")
    tt = reg.create("time", "discrete", steps=1000)
    tuned = udm.tune_grid(MIX.denoiser(corr), corr, tt, steps=4, shape=(128, 2), sampler="unipc", sweeps=1,
                          points=3, registry=reg)
    n = tuned.times * 1000
    assert torch.equal(n, n.round()) and float(tuned.times[-2]) >= 1e-3
    assert tuned.error <= tuned.start_error


@pytest.mark.parametrize("t_min", [3e-3, 1e-5])  # exp(log(t_min)) < t_min in floating point
def test_the_last_time_before_zero_stays_at_or_above_the_smallest_time(t_min):
    """An error that falls with t_{N-1} drives it to its lower bound, the smallest time, and not an ulp below."""
    times = torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=F64)
    out, best = udm.grid_tuning._move(times, 2, 1.0, lambda g: float(g[-2]), float, t_min, 3)
    assert float(out[-2]) == t_min == best


def test_a_lattice_candidate_is_evaluated_once():
    """On a coarse lattice several log-spaced candidates snap to the same time; each grid runs once."""
    tt = udm.registry().create("time", "discrete", steps=20)
    grids: list[tuple[float, ...]] = []

    def error(g):
        grids.append(tuple(g.tolist()))
        return abs(float(g[1]) - 0.35)

    times = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=F64)
    out, best = udm.grid_tuning._move(times, 1, error(times), error, udm.grid_tuning._snap(tt), 0.05, 6)
    assert len(grids) == len(set(grids)) and float(out[1]) == 0.35 and best == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "ddpm"}, r"udm.tune_grid: sampler must be deterministic .* got 'ddpm', whose output changes"),
    ({"sampler": "heun"}, r"udm.tune_grid: sampler must make one model call a step .* got 'heun' with 2 a step"),
    ({"steps": 0}, r"udm.tune_grid: steps must be an integer >= 1 .* got 0"),
    ({"sweeps": 0}, r"udm.tune_grid: sweeps must be an integer >= 1; got 0"),
    ({"objective": "max"}, r"udm.tune_grid: objective must be 'mean' or 'rms'; got 'max'"),
    ({"spacings": ("nope",)}, r"udm.tune_grid: spacings must offer at least one grid .* got \['nope'\]"),
    ({"spacings": "uniform"}, r"udm.tune_grid: spacings must be a sequence of spacing names; got 'uniform'"),
    ({"shape": 16}, r"udm.tune_grid: shape must be a tuple \(n, \*data_shape\) of integers >= 1; got 16"),
    ({"shape": (0, 2)}, r"udm.tune_grid: shape must be a tuple .* got \(0, 2\)"),
    ({"generator": 1}, r"udm.tune_grid: generator must be a torch.Generator or None; got int"),
    ({"sampler": 3}, r"udm.tune_grid: sampler must be a registered sampler's name or a udm.SamplerSpec; got int"),
    ({"sampler": "adaptive"}, r"udm.tune_grid: sampler must make one model call a step .* got 'adaptive'"),
    ({"foo": 1}, r"udm.tune_grid: sampler 'dpm\+\+2m': option.foo: the key must be one of"),
    ({"rtol": "x"}, r"udm.tune_grid: rtol must be a number > 0 .* got 'x'. E.g. rtol=1e-6"),
    ({"max_calls": 1.5}, r"udm.tune_grid: max_calls must be an integer >= 1 .* got 1.5"),
    ({"dtype": torch.int64}, r"udm.tune_grid: dtype must be a floating torch.dtype .* got torch.int64"),
])
def test_tune_grid_bad_input(reg, kwargs, match):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    tt = reg.create("time", "continuous")
    args = {"steps": 3, "shape": (16, 2), "sampler": "dpm++2m", "registry": reg, **kwargs}
    with pytest.raises(udm.ConfigError, match=match):
        udm.tune_grid(MIX.denoiser(corr), corr, tt, **args)


def test_tune_grid_checks_its_plugins_and_model(reg):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    with pytest.raises(udm.ConfigError, match=r"udm.tune_grid: time_type must be a udm time .* got str"):
        udm.tune_grid(MIX.denoiser(corr), corr, "continuous", steps=3, shape=(4, 2), registry=reg)
    with pytest.raises(udm.ConfigError, match=r"udm.tune_grid: model must be a torch.nn.Module or a denoiser"):
        udm.tune_grid(None, corr, reg.create("time", "continuous"), steps=3, shape=(4, 2), registry=reg)


def test_tune_grid_needs_the_linear_gaussian_layer(reg):
    corr = reg.create("corruption", "mask", vocab_size=4)
    tt = reg.create("time", "continuous")
    with pytest.raises(udm.CapabilityError, match=r"sampler 'dpm\+\+2m'.*Samplers 'mask' supports"):
        udm.tune_grid(lambda x, t, g=None: x, corr, tt, steps=3, shape=(4, 3), registry=reg)


def test_a_model_that_returns_nan_is_named_not_tuned(reg):
    """NaN everywhere stops the reference solve at once (not after max_calls of shrinking steps); NaN only at the
    start grid's times (the reference never lands there) leaves no finite error to tune from."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    tt = reg.create("time", "continuous")
    den = MIX.denoiser(corr)
    calls = [0]

    def nan(x, t, g=None):
        calls[0] += 1
        return torch.full_like(x, float("nan"))

    with pytest.raises(udm.UdmError, match=r"sampler 'adaptive': the model's predictions must be finite; got NaN/inf "
                                           r"at t = 0.988249 from a finite x_t"):  # logsnr's t_0, solved first
        udm.tune_grid(nan, corr, tt, steps=2, shape=(4, 2), registry=reg)
    assert calls[0] <= 7  # one Dormand-Prince step
    mid = float(tt.grid(2, spacing="uniform")[1])

    def nan_at_mid(x, t, g=None):
        out = den(x, t, g)
        return torch.full_like(out, float("nan")) if float(t.flatten()[0]) == mid else out

    with pytest.raises(udm.UdmError, match=r"udm.tune_grid: the sampler's output must be finite on at least one "
                                           r"start spacing; got NaN/inf on every one \(uniform\)"):
        udm.tune_grid(nan_at_mid, corr, tt, steps=2, shape=(4, 2), spacings=("uniform",), registry=reg)


@pytest.mark.parametrize("times, extra, match", [
    ([1.0, 0.5, 0.7, 0.0], {}, r"udm.sample: times must be strictly decreasing"),
    ([1.0, 0.5, 0.1], {}, r"udm.sample: times must end at 0 .* got last time 0.1. Append 0."),
    ([1.0, 0.5, 0.0], {"steps": 2}, r"udm.sample: times must come alone .* got times with steps"),
    ([1.0, 0.5, 0.0], {"spacing": "karras"}, r"udm.sample: times must come alone .* spacing='karras'"),
    ([1.5, 0.5, 0.0], {}, r"udm.sample: times must lie in \[0, 1\]"),
    ("soon", {}, r"udm.sample: times must be a sequence of numbers, a tensor or a udm.TunedGrid; got str"),
    ([1.0, float("nan"), 0.0], {}, r"udm.sample: times must be finite numbers; got \[1.0, nan, 0.0\]"),
    ([1.0, 1e-6, 0.0], {}, r"udm.sample: times before the last must be >= the time type's t_min = 0.001 .* got 1e-06"),
])
def test_explicit_times_bad_input(reg, times, extra, match):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    tt = reg.create("time", "continuous")
    with pytest.raises(udm.ConfigError, match=match):
        udm.sample(MIX.denoiser(corr), corr, tt, shape=(4, 2), sampler="ddim", times=times, **extra)


def test_explicit_times_must_lie_on_a_discrete_lattice(reg):
    corr = reg.create("corruption", "gaussian", schedule="linear")
    tt = reg.create("time", "discrete", steps=1000)
    with pytest.raises(udm.ConfigError, match=r"udm.sample: times must lie on the time type's lattice .* got "
                                              r"t = 0.5005, off it by 0.0005"):
        udm.sample(MIX.denoiser(corr), corr, tt, shape=(4, 2), sampler="ddim", times=[1.0, 0.5005, 0.0])


def test_a_float32_network_is_tuned_in_its_own_dtype(reg):
    """A network gets a pilot of its parameter dtype (on its device), as udm.sample gives it; float64 is refused."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    tt = reg.create("time", "continuous")
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=(2,), width=8)
    seen: list[torch.dtype] = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    tuned = udm.tune_grid(net, corr, tt, steps=2, shape=(8, 2), sweeps=1, points=1, rtol=1e-4, atol=1e-4,
                          registry=reg)
    assert set(seen) == {torch.float32} and tuned.error <= tuned.start_error
    with pytest.raises(udm.ConfigError, match=r"udm.tune_grid: dtype must be the network's parameter dtype, "
                                              r"torch.float32 .* got torch.float64. Leave dtype unset"):
        udm.tune_grid(net, corr, tt, steps=2, shape=(8, 2), dtype=F64, registry=reg)


def test_explicit_grid_starting_far_below_one_needs_its_start(reg):
    """From noise alone, a start at t_0 = 0.5 drops a(0.5) x_0 and gives the wrong spread: refused, unless x_init is
    given; the noise-level spacings' own first times (log-SNR -8, snapped to a discrete lattice) pass."""
    corr = reg.create("corruption", "gaussian", schedule="linear")
    cont, disc = reg.create("time", "continuous"), reg.create("time", "discrete", steps=1000)
    den = MIX.denoiser(corr)
    with pytest.raises(udm.ConfigError, match=r"udm.sample: times\[0\] must be 1 or a time whose log-SNR is at most "
                                              r"about -8 .* got t_0 = 0.5 with log-SNR .* Start the grid at 1.0, or "
                                              r"pass x_init"):
        udm.sample(den, corr, cont, shape=(4, 2), sampler="ddim", times=[0.5, 0.2, 0.0])
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))  # the caller's own x at t_0
    out = udm.sample(den, corr, cont, shape=(4, 2), sampler="ddim", times=[0.5, 0.2, 0.0], x_init=x)
    assert out.shape == (4, 2)
    for tt in (cont, disc):
        for spacing in ("logsnr", "karras"):
            grid = tt.grid(6, spacing=spacing, corruption=corr)
            assert float(grid[0]) < 1.0
            udm.sample(den, corr, tt, shape=(4, 2), sampler="ddim", times=grid)  # no error
