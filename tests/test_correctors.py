"""Correctors (refresh, langevin, ald, remask) and predictor-corrector sampling.

What must hold (docs/math.md, "The SDE view and correctors"):

* invariance: K corrector steps at a fixed t, applied to exact samples of p_t, leave p_t unchanged (the marginal
  check's two-sample KS statistics against fresh samples of p_t), for ``refresh`` and ``langevin``/``ald`` on a
  Gaussian mixture and for ``refresh`` and ReMDM remasking on the Markov-chain masked oracle; a corrector with a
  deliberately wrong amount rule fails the same check;
* the same-time refresh with amount r is Langevin with delta = r^2 s_t^2 up to O(r^4), exactly as the closed form;
* the corrector runs at the time the predictor reached, after every step but the last, and its model calls count;
* on the masked oracle, predictor + ReMDM remasking beats plain ``invert`` at 8 and 16 model calls (TV);
* what a corruption cannot support, and bad options, are clear errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.samplers import Sampling
from udm.testing import FixedDenoiser, Features, GaussianMixture, MarkovChain, MarkovOracle, default_features, ks_normal
from udm.testing._stats import worst_ks
from udm.plugins.correctors import LangevinCorrector, RefreshCorrector, RemaskCorrector

MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.2)
ALPHA = 1e-3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corrected(corruption, denoiser, x: torch.Tensor, t: float, corrector, seed: int = 0) -> torch.Tensor:
    """``corrector`` applied once (its ``steps`` steps) at time t to the batch x, through a Sampling run."""
    run = Sampling(denoiser, corruption, torch.tensor([t, 0.0], dtype=torch.float64), x, generator=gen(seed),
                   corrector=corrector)
    return corrector.correct(run, x.clone(), 0, None, corrector.start(run))


# ------------------------------------------------------------------------- Gaussian mixture invariance
T_MIX, N_MIX = 0.4, 4000


@pytest.fixture(scope="module")
def mixture(reg):
    corr = reg.create("corruption", "gaussian", schedule="linear")

    def p_t(seed: int) -> torch.Tensor:
        x0 = MIX.sample(N_MIX, gen(seed), dtype=torch.float64)
        return corr.forward(x0, corr.sample_noise(x0, gen(seed + 1)), torch.tensor([T_MIX], dtype=torch.float64))

    return corr, p_t


def ks_to_p_t(x: torch.Tensor, reference: torch.Tensor):
    return worst_ks(default_features(x, x, gen(5)), default_features(reference, reference, gen(5)), ALPHA)


class DataDependentRefresh(RefreshCorrector):
    """Planted bug: the amount depends on the noise it refreshes (r = |eps|^2 / (2 D), capped at 1), so the
    kernel no longer leaves q(eps) invariant jointly with x0."""

    def step(self, run, x, where, state, hand_on=False):
        pred = run.predict(x, where)
        eps = run.noise(x, pred.x0_hat, where)
        r = (eps.pow(2).mean(1) / 2).clamp(0, 1)
        return run.forward(pred.x0_hat, run.corruption.refresh_noise(eps, r, run.generator), where)


class PerSampleLangevin(LangevinCorrector):
    """Planted bug: score_sde's step rule with per-sample norms, e = 2 (snr |z_i| / |score_i|)^2: the step depends on
    x and blows up where the score vanishes."""

    def step_size(self, run, x, where, score, z):
        e = 2 * (self.snr * z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)) ** 2
        return udm.append_dims(e, x.ndim)


@pytest.mark.parametrize("name, options, exact_draws", [
    ("refresh", {"amount": 0.8, "steps": 5}, True),   # exact for any amount with x0_hat ~ q(x_0 | x_t)
    ("refresh", {"amount": 1.0, "steps": 2}, True),
    ("langevin", {"snr": 0.16, "steps": 5}, False),   # score_sde's rule with the exact score
    ("ald", {"snr": 0.16, "steps": 5}, False),
])
def test_correctors_keep_the_gaussian_mixture_marginal(reg, mixture, name, options, exact_draws):
    corr, p_t = mixture
    den = MIX.posterior_sampler(corr) if exact_draws else MIX.denoiser(corr)
    x = corrected(corr, den, p_t(1), T_MIX, reg.create("corrector", name, **options))
    worst = ks_to_p_t(x, p_t(11))
    print(f"{name} {options}: {worst.describe()}")
    assert worst.passed, worst.describe()


@pytest.mark.parametrize("corrector", [DataDependentRefresh(steps=3), PerSampleLangevin(steps=5, snr=0.16)],
                         ids=["refresh-amount-from-eps", "langevin-per-sample-norm"])
def test_a_wrong_amount_rule_fails_the_invariance_check(mixture, corrector):
    corr, p_t = mixture
    den = MIX.posterior_sampler(corr) if isinstance(corrector, RefreshCorrector) else MIX.denoiser(corr)
    worst = ks_to_p_t(corrected(corr, den, p_t(1), T_MIX, corrector), p_t(11))
    print(f"{type(corrector).__name__}: {worst.describe()}")
    assert not worst.passed, worst.describe()


@pytest.mark.parametrize("t", [T_MIX, 0.05])
def test_the_exact_mixture_posterior_sampler(mixture, t):
    """x_0 ~ p, x_t ~ p(x_t | x_0), x_0' ~ posterior_sample(x_t): x_0' ~ p again, and E[x_0' | x_t] is the
    posterior mean (mean over 64 draws per x_t within 5 standard errors). At t = 0.05 the posterior spread within a
    component is a fifth of the prior's, so drawing with the prior's spread fails."""
    corr, _ = mixture
    x0 = MIX.sample(N_MIX, gen(1), dtype=torch.float64)
    x = corr.forward(x0, corr.sample_noise(x0, gen(2)), torch.tensor([t], dtype=torch.float64))
    sch = corr.schedule(torch.full((len(x),), t, dtype=torch.float64))
    draws = MIX.posterior_sample(x, sch.alpha, sch.sigma, gen(2))
    worst = ks_to_p_t(draws, MIX.sample(N_MIX, gen(3), dtype=torch.float64))
    assert worst.passed, worst.describe()
    xs = x[:50].repeat_interleave(64, 0)
    many = MIX.posterior_sample(xs, sch.alpha[:1].expand(len(xs)), sch.sigma[:1].expand(len(xs)), gen(4))
    mean = MIX.posterior_mean(x[:50], sch.alpha[:50], sch.sigma[:50])
    m, sd = many.view(50, 64, 2).mean(1), many.view(50, 64, 2).std(1)
    assert bool(((m - mean).abs() < 5 * sd / 8 + 1e-9).all())


# ----------------------------------------------------------------------------------- Langevin equivalence
def test_same_time_refresh_is_langevin_up_to_r4(reg, mixture):
    """refresh(r) and ALD with snr = r / 2 (delta = 2 e = r^2 s_t^2) use the same z; they differ by exactly
    (1 - sqrt(1 - r^2) - r^2 / 2) s_t^2 score = O(r^4): the deviation over r = 0.4 .. 0.025 matches the closed form
    to 1e-9 relative and falls 16x per halving of r (log-log slope 4)."""
    corr, p_t = mixture
    x = p_t(1)[:500]
    s = corr.marginal(torch.tensor([T_MIX], dtype=torch.float64), x).s
    score = corr.score(corr.marginal(torch.tensor([T_MIX], dtype=torch.float64), x), x, MIX.denoiser(corr)(
        x, torch.full((len(x),), T_MIX, dtype=torch.float64)))
    devs = []
    for r in (0.4, 0.2, 0.1, 0.05, 0.025):
        a = corrected(corr, MIX.denoiser(corr), x, T_MIX, reg.create("corrector", "refresh", amount=r), seed=3)
        b = corrected(corr, MIX.denoiser(corr), x, T_MIX, reg.create("corrector", "ald", snr=r / 2), seed=3)
        closed = (1 - math.sqrt(1 - r * r) - r * r / 2) * s * s * score
        assert float(((a - b) - closed).abs().max()) < 1e-9 * float(closed.abs().max()) + 1e-14
        devs.append(float((a - b).abs().max()))
    slopes = [math.log2(u / v) for u, v in zip(devs, devs[1:])]
    print(f"refresh vs Langevin: max deviation {devs}, log-log slopes {slopes}")
    assert all(3.9 < k < 4.1 for k in slopes), slopes


# ----------------------------------------------------------------------------- masking invariance (ReMDM)
T_MASK, N_MASK, CHAIN = 0.5, 6000, MarkovChain.random(6, 8, seed=0)


def token_features(x: torch.Tensor) -> Features:
    """Each position's token ([MASK] = 6), the number masked, and every adjacent pair (a * 7 + b)."""
    pairs = x[:, :-1] * 7 + x[:, 1:]
    return Features(torch.cat([x, (x == 6).sum(1, keepdim=True), pairs], 1).double(),
                    [f"token at position {j}" for j in range(8)] + ["positions masked"]
                    + [f"pair at positions {j}, {j + 1}" for j in range(7)])


def mask_p_t(corruption, seed: int) -> torch.Tensor:
    x0 = CHAIN.sample(N_MASK, gen(seed))
    return corruption.forward(x0, corruption.sample_noise(x0, gen(seed + 1)), torch.tensor([T_MASK]))


class RemaskByToken(RemaskCorrector):
    """Planted bug: an amount rule that reads the tokens (re-mask only visible tokens 0, 1, 2): which positions end
    up masked then depends on x_0."""

    def amounts(self, run, x, where, pred, state):
        return torch.where(x == run.corruption.mask_id, self.eta, (x < 3).double() * self.eta)


@pytest.mark.parametrize("exact_count", [False, True])
@pytest.mark.parametrize("name, options", [("refresh", {"amount": 0.7, "steps": 4}),
                                           ("remask", {"schedule": "rescale", "eta": 0.7, "steps": 4}),
                                           ("remask", {"schedule": "cap", "eta": 0.2, "steps": 4})])
def test_remasking_keeps_the_masked_marginal(reg, exact_count, name, options):
    """With an exact joint draw of q(x_0 | x_t) (forward filtering, backward sampling on the chain)."""
    corr = reg.create("corruption", "mask", vocab_size=6, exact_count=exact_count)
    x = corrected(corr, MarkovOracle(CHAIN, corr, joint=True), mask_p_t(corr, 1), T_MASK,
                  reg.create("corrector", name, **options))
    worst = worst_ks(token_features(x), token_features(mask_p_t(corr, 11)), ALPHA)
    print(f"{name} {options} exact_count={exact_count}: {worst.describe()}")
    assert worst.passed, worst.describe()


@pytest.mark.parametrize("exact_count", [False, True])
def test_remasking_that_reads_the_tokens_fails_the_invariance_check(reg, exact_count):
    corr = reg.create("corruption", "mask", vocab_size=6, exact_count=exact_count)
    x = corrected(corr, MarkovOracle(CHAIN, corr, joint=True), mask_p_t(corr, 1), T_MASK,
                  RemaskByToken(steps=4, eta=0.7))
    worst = worst_ks(token_features(x), token_features(mask_p_t(corr, 11)), ALPHA)
    print(f"remask by token, exact_count={exact_count}: {worst.describe()}")
    assert not worst.passed, worst.describe()


def test_the_joint_posterior_draw_is_exact():
    """MarkovChain.sample_posterior against enumeration of all 3^4 sequences: position 1 seen, the rest masked;
    every state's frequency within 5 standard errors of its posterior probability."""
    chain = MarkovChain.random(3, 4, seed=2)
    n = 100_000
    seen = torch.tensor([[False, True, False, False]]).expand(n, 4)
    ref = torch.where(seen, torch.ones(n, 4, dtype=torch.long), torch.full((n, 4), 3))
    x = chain.sample_posterior(ref, torch.ones(n, 4), (~seen).double(), gen(0))
    states = torch.stack([(torch.arange(81) // 3 ** (3 - j)) % 3 for j in range(4)], 1)
    post = chain.probs() * (states[:, 1] == 1)
    post = post / post.sum()
    freq = torch.bincount(chain.encode(x), minlength=81).double() / n
    assert bool(((freq - post).abs() <= 5 * (post * (1 - post) / n).sqrt() + 1e-12).all())


# -------------------------------------------------------------------------- composition with any rule
def test_the_corrector_runs_at_the_time_reached_after_every_step_but_the_last(reg):
    """Oracle x0_hat = x_0, refresh with amount 1: after each corrected step the state is F_s(x_0, fresh eps) at
    the time s the step reached, so (x - a_s x_0) / s_s is N(0, I) (KS), and fresh: uncorrelated with the previous
    step's noise, which DDIM alone would carry over unchanged; the last step returns x_0."""
    corr = reg.create("corruption", "gaussian", schedule="linear")
    time = reg.create("time", "continuous", t_min=0.05)
    x0 = MIX.sample(3000, gen(1), dtype=torch.float64)
    steps: list = []
    out = udm.sample(FixedDenoiser(x0), corr, time, shape=(3000, 2), sampler="ddim", steps=5, generator=gen(2),
                     dtype=torch.float64, callback=steps.append, corrector={"name": "refresh", "amount": 1.0},
                     registry=reg)
    assert torch.equal(out, x0) and len(steps) == 5
    noises = []
    for st in steps[:-1]:
        m = corr.marginal(torch.tensor([st.s], dtype=torch.float64), x0)
        noises.append((st.x - m.a * x0) / m.s)
        res = ks_normal(noises[-1], ALPHA)
        assert res.passed, (st.s, res)
    for a, b in zip(noises, noises[1:]):
        corr_ab = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
        assert abs(corr_ab) < 5 / math.sqrt(a.numel()), corr_ab


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun", "sde", "edm", "reverse_diffusion"])
def test_model_calls_are_counted_and_budgeted(reg, sampler):
    corr = reg.create("corruption", "gaussian")
    time = reg.create("time", "continuous")
    spec = reg.get("sampler", sampler)
    for corrector in ({"name": "langevin", "steps": 2}, {"name": "refresh", "steps": 2, "last": 3},
                      {"name": "refresh", "steps": 2, "share": True}):
        c = udm.samplers.resolve_corrector(corrector, corr, reg)
        steps: list = []
        udm.sample(MIX.denoiser(corr), corr, time, shape=(8, 2), sampler=sampler, nfe=25, generator=gen(0),
                   registry=reg, callback=steps.append, corrector=corrector)
        n = len(steps)
        assert steps[-1].nfe == spec.calls(n, corrector=c) <= 25 < spec.calls(n + 1, corrector=c), (corrector, n)
        assert steps[-1].reused == (c.applications(n) if c.calls() < c.steps else 0)


def test_a_shared_prediction_is_exact_with_posterior_draws(reg):
    """``share``: the predictor's next step reuses the corrector's prediction. With x0_hat drawn from the exact
    posterior that is a draw given the refreshed state too, so predictor + corrector keeps the marginals: the state
    before the last step is p_t there (KS against x_0 ~ p pushed through F_t), with one model call a step."""
    corr = reg.create("corruption", "gaussian", schedule="linear")
    time = reg.create("time", "discrete", steps=1000)
    steps: list = []
    x1 = corr.forward(MIX.sample(3000, gen(3), dtype=torch.float64), torch.randn(3000, 2, generator=gen(6),
                                                                                  dtype=torch.float64), torch.ones(1))
    udm.sample(MIX.posterior_sampler(corr), corr, time, shape=(3000, 2), sampler="ddim", steps=20, x_init=x1,
               generator=gen(4), registry=reg, callback=steps.append,
               corrector={"name": "refresh", "amount": 0.9, "share": True})
    assert steps[-1].nfe == 20 and steps[-1].reused == 19
    x0 = MIX.sample(3000, gen(5), dtype=torch.float64)
    p_t = corr.forward(x0, corr.sample_noise(x0, gen(7)), torch.tensor([steps[-2].s], dtype=torch.float64))
    worst = ks_to_p_t(steps[-2].x, p_t)
    assert worst.passed, worst.describe()


# ------------------------------------------------------------------------------------- masked quality
V, L, N_TV = 6, 8, 12_000
_TV: dict = {}


def masked_tv(nfe: int, corrector=None) -> float:
    key = (nfe, str(corrector))
    if key not in _TV:
        corr = udm.registry().create("corruption", "mask", vocab_size=V)
        time = udm.registry().create("time", "continuous")
        x = udm.sample(MarkovOracle(CHAIN, corr), corr, time, shape=(N_TV, L), sampler="invert", nfe=nfe,
                       generator=gen(nfe), corrector=corrector)
        _TV[key] = CHAIN.tv(x)
    return _TV[key]


REMDM = {"name": "remask", "schedule": "confidence", "eta": 0.5, "share": True}


@pytest.mark.parametrize("nfe", [8, 16])
def test_remasking_beats_invert_at_the_same_model_calls(nfe):
    """Independent masking, per-position posterior marginals (as a non-autoregressive network): ReMDM's
    confidence remasking inside each step (one shared prediction) has a lower TV to the chain's law than plain
    invert with the same calls, by more than 4 standard deviations of the TV of true draws of this size (12k: std
    0.003; measured with 20k samples over 3 seeds: 0.230 vs 0.258 at 8 calls, 0.155 vs 0.169 at 16)."""
    _, std = CHAIN.tv_floor(N_TV, seeds=8)
    plain, pc = masked_tv(nfe), masked_tv(nfe, REMDM)
    print(f"nfe {nfe}: invert TV {plain:.4f}, invert + remask {pc:.4f} (std {std:.4f})")
    assert pc < plain - 4 * std, (pc, plain, std)


# ----------------------------------------------------------------------------------------- bad input
def test_a_corrector_the_corruption_cannot_support_names_the_supported_ones(reg):
    mask = reg.create("corruption", "mask", vocab_size=4)
    time = reg.create("time", "continuous")
    with pytest.raises(udm.CapabilityError, match=r"udm\.sample: corrector 'langevin': corruption 'mask' must offer "
                                                  r"linear_gaussian; it lacks linear_gaussian\. Correctors corruption 'mask' "
                                                  r"supports: refresh, remask\."):
        udm.sample(MarkovOracle(MarkovChain.random(4, 3, seed=0), mask), mask, time, shape=(2, 3), steps=2,
                   corrector="langevin", registry=reg)
    gauss = reg.create("corruption", "gaussian")
    with pytest.raises(udm.CapabilityError, match=r"corrector 'remask': corruption 'gaussian' must offer a masking "
                                                  r"schedule tau\(t\).*Correctors corruption 'gaussian' supports: ald, "
                                                  r"langevin, "
                                                  r"refresh\."):
        udm.samplers.resolve_corrector("remask", gauss, reg)


@pytest.mark.parametrize("spec, pattern", [
    ({"name": "refresh", "amount": -0.2}, r"corrector 'refresh': amount must be a number in \[0, 1\]; got -0\.2"),
    ({"name": "remask", "eta": 1.5}, r"corrector 'remask': eta must be a number in \[0, 1\]; got 1\.5"),
    ({"name": "remask", "schedule": "loop"}, r"corrector 'remask': schedule must be one of 'rescale', 'cap', "
                                             r"'confidence'; got 'loop'"),
    ({"name": "langevin", "snr": 0.0}, r"corrector 'langevin': snr must be a number > 0; got 0\.0"),
    ({"name": "ald", "steps": 0}, r"corrector 'ald': steps must be an integer >= 1; got 0"),
    ({"name": "refersh"}, r"corrector 'refersh': name must be a registered corrector; got 'refersh'\. Available: ald, "
                          r"langevin, refresh, remask\. Did you mean 'refresh'\?"),
    (3, r"udm\.sample: corrector must be a registered corrector's name, a mapping"),
])
def test_bad_corrector_options_are_clear_errors(reg, spec, pattern):
    corr = reg.create("corruption", "gaussian")
    with pytest.raises((udm.ConfigError, udm.UnknownPluginError), match=pattern):
        udm.sample(MIX.denoiser(corr), corr, reg.create("time", "continuous"), shape=(2, 2), steps=2,
                   corrector=spec, registry=reg)


def test_a_rule_must_report_every_step_and_keep_its_own_state(reg):
    corr = reg.create("corruption", "gaussian")
    grid = reg.create("time", "continuous").grid(4)
    x_init = torch.zeros(3, 2)
    c = reg.create("corrector", "refresh")

    @udm.samplers.requires()
    def silent(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
        run = Sampling(denoiser, corruption, times, x_init, generator=generator)
        x = x_init
        for i in run:
            x = run.forward(run.predict(x, i).x0_hat, torch.zeros_like(x), i + 1)
        return x

    @udm.samplers.requires()
    def in_place(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
        run = Sampling(denoiser, corruption, times, x_init, generator=generator)
        for i in run:
            run.report(i, x_init, run.predict(x_init, i))
        return x_init

    with pytest.raises(udm.CapabilityError, match=r"corrector 'refresh': the sampler rule must call run\.report"):
        silent(MIX.denoiser(corr), corr, grid, x_init, corrector=c)
    with pytest.raises(udm.CapabilityError, match=r"the rule's state after a step must be a new tensor; got the "
                                                  r"starting batch x_init itself"):
        in_place(MIX.denoiser(corr), corr, grid, x_init, corrector=c)
    assert torch.equal(x_init, torch.zeros(3, 2))


def test_yaml_checks_the_corrector_section(reg):
    from udm.config import validate
    from _tiny import TINY

    def check(corrector):
        cfg = udm.config.parse_config(TINY)
        cfg["sample"]["corrector"] = corrector
        return validate(cfg, reg, "exp.yaml")

    assert check({"name": "langevin", "snr": 0.1})["sample"]["corrector"] == {"name": "langevin", "snr": 0.1}
    with pytest.raises(udm.ConfigError, match=r"exp\.yaml: sample\.corrector\.amount: the value must be a number in "
                                              r"\[0, 1\]; got -1"):
        check({"name": "refresh", "amount": -1})
    with pytest.raises(udm.ConfigError, match=r"exp\.yaml: sample\.corrector\.name: the name must be a registered "
                                              r"corrector; got 'langevine'.*Did you mean 'langevin'\?"):
        check({"name": "langevine"})
    with pytest.raises(udm.ConfigError, match=r"exp\.yaml: sample\.corrector\.snrr: the key must be one of last, "
                                              r"snr, steps, name; got 'snrr'.*Did you mean 'snr'\?"):
        check({"name": "langevin", "snrr": 0.1})
    with pytest.raises(udm.ConfigError, match=r"exp\.yaml: sample\.corrector: the value must be a registered "
                                              r"corrector name or a mapping"):
        check(3)


def test_a_corrector_names_the_samples_file():
    """Two evaluations that differ only in their corrector must not overwrite each other's samples."""
    from udm._artifacts import samples_stem

    base = {"sampler": "ddim", "sample_steps": 4, "seed": 0}
    assert samples_stem(base) == "ddim-4steps-seed0"
    assert samples_stem(base | {"corrector": {"name": "langevin", "snr": 0.1}}) == "ddim-4steps-seed0-langevin"
    assert samples_stem(base | {"variance": "analytic", "corrector": "refresh"}) == "ddim-4steps-seed0-analytic-refresh"
