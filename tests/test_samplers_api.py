"""``udm.sample`` / ``resolve_sampler`` / the rule functions: capability errors, option errors,
determinism under a generator, the callback protocol, and the last step returning x0_hat."""

from __future__ import annotations

import pytest
import torch

import udm
from udm import samplers as S
from udm.errors import CapabilityError, ConfigError, UnknownPluginError
from udm.testing import FixedDenoiser, GaussianMixture


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Bare(udm.Corruption):
    """The required set only: no noise_posterior, no refresh_noise, no posterior, no schedule."""

    name = "bare"

    def sample_noise(self, x0, generator):
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    def forward(self, x0, eps, t):
        return x0 + udm.append_dims(t, x0.ndim).to(x0.dtype) * eps

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        return torch.randn(shape, generator=generator, dtype=dtype or torch.float32)


MIX = GaussianMixture.ring()


@pytest.fixture(scope="module")
def gauss(reg):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    time = reg.create("time", "discrete", steps=100)
    return corr, time, MIX.denoiser(corr)


def test_capabilities_are_discovered_from_the_object(gauss):
    assert udm.capabilities(Bare()) == {"vector_space"}
    assert udm.capabilities(gauss[0]) >= {"noise_posterior", "refresh_noise", "posterior", "schedule", "vector_space"}


def test_unsupported_sampler_lists_the_supported_ones(reg):
    bare = Bare()
    assert udm.supported_samplers(bare, reg) == ["naive", "renoise"]
    with pytest.raises(CapabilityError, match=r"sampler 'ddim': corruption 'bare' must offer noise_posterior; it lacks "
                                              r"noise_posterior\. Samplers 'bare' supports: naive, renoise\."):
        udm.resolve_sampler("ddim", bare, reg)
    with pytest.raises(CapabilityError, match=r"sampler 'ddpm': corruption 'bare' must offer noise_posterior, "
                                              r"refresh_noise, linear_gaussian; it lacks noise_posterior, "
                                              r"refresh_noise, linear_gaussian\. Samplers 'bare' supports: naive, renoise\."):
        udm.sample(FixedDenoiser(torch.zeros(4, 2)), bare, reg.create("time", "discrete", steps=10),
                   shape=(4, 2), sampler="ddpm", steps=5, registry=reg)
    # the rule functions and the spec check too, when called directly
    with pytest.raises(CapabilityError, match=r"sampler rule 'invert': corruption 'bare' must offer noise_posterior; "
                                              r"it lacks noise_posterior\. Choose a sampler the corruption supports"):
        S.invert(FixedDenoiser(torch.zeros(4, 2)), bare, [1.0, 0.0], torch.zeros(4, 2))
    with pytest.raises(CapabilityError, match=r"sampler 'posterior': corruption 'bare' must offer posterior; "
                                              r"it lacks posterior\."):
        reg.get("sampler", "posterior")(FixedDenoiser(torch.zeros(4, 2)), bare, [1.0, 0.0], torch.zeros(4, 2))
    # what it does support runs
    x = udm.sample(FixedDenoiser(torch.ones(4, 2)), bare, reg.create("time", "discrete", steps=10),
                   shape=(4, 2), sampler="naive", steps=5, generator=gen(0), registry=reg)
    assert torch.equal(x, torch.ones(4, 2))


def test_resolve_sampler_unknown_name(reg, gauss):
    with pytest.raises(UnknownPluginError, match=r"sampler 'huen': name must be a registered sampler; got 'huen'\. "
                                                 r"Available: .*Did you mean 'heun'\?"):
        udm.resolve_sampler("huen", gauss[0], reg)
    spec = reg.get("sampler", "ddim")
    assert udm.resolve_sampler(spec, gauss[0]) is spec


def test_refresh_option_errors(gauss):
    corr, time, den = gauss
    x = torch.zeros(4, 2)
    grid = time.grid(5)
    with pytest.raises(ConfigError, match=r"sampler 'refresh': give exactly one of eta or amount; "
                                          r"got eta=None, amount=None\."):
        S.refresh(den, corr, grid, x)
    with pytest.raises(ConfigError, match=r"give exactly one of eta or amount; got eta=0\.5, amount=0\.5\."):
        S.refresh(den, corr, grid, x, eta=0.5, amount=0.5)
    with pytest.raises(ConfigError, match=r"sampler 'refresh': eta must be in \[0, 1\]; got 1\.5\."):
        S.refresh(den, corr, grid, x, eta=1.5)
    with pytest.raises(ConfigError, match=r"sampler 'refresh': amount must be in \[0, 1\]; got -0\.1\."):
        S.refresh(den, corr, grid, x, amount=-0.1)


def test_unknown_solver(gauss, reg):
    corr, time, den = gauss
    with pytest.raises(ConfigError, match=r"udm.sample: sampler 'ode': option.solver: the value must be one of 'euler', "
                                          r"'heun', 'rk4'; got 'heunn'\."):
        udm.sample(den, corr, reg.create("time", "continuous"), shape=(4, 2), sampler="ode", steps=5,
                   solver="heunn", registry=reg)


def test_bad_grid_is_rejected(gauss):
    corr, _, den = gauss
    with pytest.raises(ConfigError, match=r"sampler: times must be strictly decreasing"):
        S.invert(den, corr, [0.5, 0.7, 0.0], torch.zeros(4, 2))


@pytest.mark.parametrize("sampler", ["ddpm", "refresh", "renoise", "posterior", "ddim"])
def test_determinism_under_a_seeded_generator(gauss, reg, sampler):
    corr, time, den = gauss
    opts = {"amount": 0.3} if sampler == "refresh" else {}
    run = lambda seed: udm.sample(den, corr, time, shape=(64, 2), sampler=sampler, steps=10,  # noqa: E731
                                  generator=gen(seed), registry=reg, **opts)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the prior (and, for stochastic rules, the noise) depends on the seed


def test_callback_protocol_and_last_step_is_x0_hat(gauss, reg):
    corr, time, den = gauss
    steps: list[udm.SamplerStep] = []
    x = udm.sample(den, corr, time, shape=(32, 2), sampler="ddpm", steps=10, generator=gen(0),
                   registry=reg, callback=steps.append)
    grid = time.grid(10).tolist()
    assert [s.index for s in steps] == list(range(10)) and all(s.steps == 10 for s in steps)
    assert [s.t for s in steps] == grid[:-1] and [s.s for s in steps] == grid[1:]
    assert torch.equal(steps[-1].x, x)
    assert torch.equal(steps[-1].x, steps[-1].x0_hat)  # the last step returns x0_hat, no noise added
    assert x.shape == (32, 2) and x.dtype == torch.float32


def test_sample_with_a_network_and_clamping(gauss, reg):
    corr, time, _ = gauss
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=16, depth=1)
    x = udm.sample(net, corr, time, shape=(8, 2), sampler="ddim", steps=4, generator=gen(0), registry=reg)
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    clamped = reg.create("corruption", "gaussian", schedule="cosine", data_range=[-0.1, 0.1])
    y = udm.sample(FixedDenoiser(torch.full((8, 2), 5.0)), clamped, time, shape=(8, 2), sampler="ddim",
                   steps=4, generator=gen(0), registry=reg, clamp=True)
    assert torch.equal(y, torch.full((8, 2), 0.1))


def test_refresh_amount_interpolates_between_invert_and_renoise(gauss):
    """amount = 0 is invert exactly; amount = 1 is renoise exactly (same noise draws)."""
    corr, time, den = gauss
    grid = time.grid(8)
    x_T = torch.randn(64, 2, generator=gen(5))
    assert torch.equal(S.refresh(den, corr, grid, x_T, amount=0.0, generator=gen(1)),
                       S.invert(den, corr, grid, x_T, generator=gen(1)))
    got = S.refresh(den, corr, grid, x_T, amount=1.0, generator=gen(1))
    assert torch.allclose(got, S.renoise(den, corr, grid, x_T, generator=gen(1)), atol=1e-6)


class Counting:
    """A token denoiser that counts its calls and predicts token 0 everywhere."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x_t, t, generator=None):
        self.calls += 1
        return torch.zeros_like(x_t)


def test_sampling_reuses_a_prediction_only_for_an_unchanged_state_of_a_time_invariant_corruption():
    from udm.plugins.mask import MaskCorruption

    class TimeDependent(MaskCorruption):
        time_invariant_posterior = False

    times = torch.linspace(1, 0, 5, dtype=torch.float64)
    x = torch.full((3, 4), 2, dtype=torch.long)  # all [MASK] (vocab 2)
    den = Counting()
    run = S.Sampling(den, MaskCorruption(2), times, x)
    run.predict(x, 0)
    first = run.predict(x, 0)  # a second prediction at the same time and state is a new draw: a call
    assert run.predict(x.clone(), 1) is first and (run.nfe, run.reused, den.calls) == (2, 1, 2)
    x[0, 0] = 1  # changed in place: detected (the state is copied at each call)
    assert run.predict(x, 2) is not first and (run.nfe, run.reused) == (3, 1)
    done = torch.ones(3, 4, dtype=torch.long)  # nothing masked: x0_hat = x_t without a call
    assert torch.equal(run.predict(done, 3).x0_hat, done) and (run.nfe, run.reused, den.calls) == (3, 2, 3)
    for corruption, reuse in ((TimeDependent(2), None), (MaskCorruption(2), False)):
        den = Counting()
        run = S.Sampling(den, corruption, times, x, reuse=reuse)
        for i in range(3):
            run.predict(done if i == 2 else x, i)
        assert (run.nfe, run.reused, den.calls) == (3, 0, 3)


class EpsNet(torch.nn.Module):
    """The exact eps network for data x_0 = 0 (eps = x_t / sigma_t), off by 1e-3 (a good float32 network);
    the model sees the discrete index n = 1000 t."""

    def __init__(self, corruption):
        super().__init__()
        self.sigma = lambda t: corruption.schedule(t).sigma

    def forward(self, x, n):
        return x / self.sigma(n / 1000).to(x.dtype)[:, None] + 1e-3


COS_TABLE = {"name": "table", "beta_schedule": "squaredcos_cap_v2"}  # diffusers' cosine: alpha(1) = 4.9e-5


def test_eps_network_started_where_alpha_is_tiny_warns_with_the_gain(reg):
    """Issue 18, item 3: diffusers' cosine table ends at alpha_bar = 2.4e-9; an eps network's x0_hat there is
    (x_t - sigma eps_hat) / alpha, so its error is multiplied by sigma/alpha = 2.0e4: an error of 1e-3 puts
    x0_hat at -20 for data that are all 0."""
    c = reg.create("corruption", "gaussian", schedule=COS_TABLE, prediction="eps")
    time = reg.create("time", "discrete", steps=1000)
    first = []
    with pytest.warns(udm.IllConditionedWarning,
                      match=r"sampling with corruption 'gaussian': the amplitude alpha where a network predicting eps "
                            r"starts must be >= 0\.0001 .*; got alpha = 4\.93e-05 at t = 1, an error gain of 2\.03e\+04\. "
                            r"Clamp x0_hat \(clamp=True with the corruption's data_range\)") as record:
        udm.sample(EpsNet(c), c, time, shape=(64, 2), sampler="ddim", steps=10, generator=gen(0),
                   callback=first.append)
    assert record[0].filename == __file__  # points at the caller, not into udm
    sch = c.schedule(torch.ones(1, dtype=torch.float64))
    gain = float(sch.sigma / sch.alpha)
    assert gain == pytest.approx(2.03e4, rel=2e-3)
    assert torch.allclose(first[0].x0_hat, torch.full((64, 2), -1e-3 * gain), rtol=1e-3)  # the damage


@pytest.mark.parametrize("case", ["clamped", "v", "linear", "callable", "later_start"])
def test_no_ill_conditioning_warning_where_the_conversion_is_safe(reg, case):
    import warnings

    schedule = "linear" if case == "linear" else COS_TABLE
    c = reg.create("corruption", "gaussian", schedule=schedule, prediction="v" if case == "v" else "eps",
                   data_range=[-1, 1])
    time = reg.create("time", "discrete", steps=1000)
    model = (lambda x, t, g=None: torch.zeros_like(x)) if case == "callable" else EpsNet(c)
    times = torch.tensor([0.99, 0.5, 0.0], dtype=torch.float64) if case == "later_start" else time.grid(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", udm.IllConditionedWarning)
        den = model if case == "callable" else udm.Denoiser(model, c, time)
        S.invert(den, c, times, torch.randn(8, 2, generator=gen(0)), clamp=case == "clamped")


class ClosedForm(torch.nn.Module):
    """The exact mixture denoiser as a network predicting x_0 from (x_t, n = 100 t): no parameters; with
    ``buffer`` its mixture means are a float64 buffer (so the run is float64), else plain attributes."""

    def __init__(self, corruption, buffer: bool):
        super().__init__()
        self.corruption = corruption
        if buffer:
            self.register_buffer("means", MIX.means.clone())

    def forward(self, x, n):
        sch = self.corruption.schedule(n.double() / 100)
        return MIX.posterior_mean(x, sch.alpha, sch.sigma)


@pytest.mark.parametrize("buffer", [True, False])
def test_sample_with_a_network_without_parameters(gauss, reg, buffer):
    """Issue 18, item 2: a closed-form network (only a buffer, or nothing at all) samples like the same
    denoiser given as a callable; the run's dtype is the buffer's, else float32 (it raised StopIteration)."""
    _, time, _ = gauss
    corr = reg.create("corruption", "gaussian", schedule="cosine", prediction="x0")
    net = ClosedForm(corr, buffer)
    assert not list(net.parameters()) and len(list(net.buffers())) == int(buffer)
    x = udm.sample(net, corr, time, shape=(256, 2), sampler="ddim", steps=20, generator=gen(3))
    dtype = torch.float64 if buffer else torch.float32
    ref = udm.sample(MIX.denoiser(corr), corr, time, shape=(256, 2), sampler="ddim", steps=20, generator=gen(3),
                     dtype=dtype)
    assert x.dtype == dtype and x.device.type == "cpu"
    assert torch.allclose(x, ref, atol=1e-5 if buffer else 1e-4)
