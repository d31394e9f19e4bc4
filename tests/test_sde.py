"""The reverse-SDE samplers (``sde``, ``reverse_diffusion``, ``edm``) against the papers' own update rules, written
out here by hand with the exact Gaussian-mixture denoiser E[x_0 | x_t] (udm.testing.GaussianMixture):

* ``sde`` with eta = 0 is the probability-flow ODE sampler (``ode``, Euler) to 1e-10, also per basis coefficient;
* ``sde`` with eta = 1 is score_sde's Euler-Maruyama predictor on the VP SDE (beta(t) = 0.1 + 19.9 t);
* ``reverse_diffusion`` is score_sde's reverse-diffusion predictor for VP (DDPM's betas) and for VE;
* ``edm`` is Karras et al.'s Algorithm 2 (stochastic Heun with churn) on the VE SDE, and with churn = 0
  converges at second order;
* Euler-Maruyama is weakly first order: the error of E|x|^2 falls like 1/N (eta = 1 and eta = 0.5);
* the singular and unsupported cases are clear errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
import udm.testing
from udm import samplers as S
from udm.testing import GaussianMixture

MIX = GaussianMixture.ring(k=8, radius=2.0, std=0.2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def record(store: list):
    return store.append


# --------------------------------------------------------------------------------- eta = 0 is the PF-ODE
@pytest.mark.parametrize("schedule", ["linear", "vp", "cosine"])
def test_eta_zero_is_the_probability_flow_ode(reg, schedule):
    corr = reg.create("corruption", "gaussian", schedule=schedule)
    time = reg.create("time", "continuous", t_min=1e-3)
    grid = time.grid(40)
    x = torch.randn(300, 2, generator=gen(0), dtype=torch.float64) * 2
    a, b = [], []
    S.sde(MIX.denoiser(corr), corr, grid, x, eta=0.0, callback=record(a))
    S.ode(MIX.denoiser(corr), corr, grid, x, solver="euler", callback=record(b))
    dev = max(float((u.x - v.x).abs().max()) for u, v in zip(a, b))
    assert len(a) == len(grid) - 1 and dev < 1e-10, dev


def test_eta_zero_is_the_ode_per_basis_coefficient(reg):
    """Blur: f and g^2 differ per DCT coefficient; the drift is applied in the basis."""
    corr = reg.create("corruption", "blur")
    time = reg.create("time", "continuous", t_min=1e-3)
    grid = time.grid(12)[1:]
    x = torch.randn(6, 1, 8, 8, generator=gen(1), dtype=torch.float64)
    den = lambda x_t, t, g=None: 0.6 * x_t  # noqa: E731  (any deterministic denoiser)
    a = S.sde(den, corr, grid, x, eta=0.0)
    b = S.ode(den, corr, grid, x, solver="euler")
    assert float((a - b).abs().max()) < 1e-10


# ---------------------------------------------------------------------- score_sde's predictors by hand
def vp_beta(t: float) -> float:
    return 0.1 + 19.9 * t


def vp_amplitudes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = torch.exp(-0.1 * t / 2 - 19.9 * t * t / 4)
    return alpha, (1 - alpha * alpha).sqrt()


def test_eta_one_is_score_sde_euler_maruyama_on_vp(reg):
    """score_sde: x_mean = x + [f x - g^2 score] dt, x = x_mean + g sqrt(-dt) z, dt < 0; VP: f = -beta/2, g^2 = beta."""
    corr = reg.create("corruption", "gaussian", schedule="vp")
    grid = reg.create("time", "continuous", t_min=1e-3).grid(30)
    x_T = torch.randn(200, 2, generator=gen(2), dtype=torch.float64)
    got: list = []
    S.sde(MIX.denoiser(corr), corr, grid, x_T, generator=gen(7), eta=1.0, callback=record(got))
    x, g = x_T, gen(7)
    ts = grid.tolist()
    for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        alpha, sigma = vp_amplitudes(torch.tensor([t], dtype=torch.float64))
        x0 = MIX.posterior_mean(x, alpha.expand(len(x)), sigma.expand(len(x)))
        if s == 0:
            x = x0
        else:
            score = (alpha * x0 - x) / sigma**2
            dt = s - t
            x = x + (-vp_beta(t) / 2 * x - vp_beta(t) * score) * dt
            x = x + math.sqrt(vp_beta(t) * -dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        assert float((got[k].x - x).abs().max()) < 1e-8, k


def ddpm_alpha_bar() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def test_reverse_diffusion_is_score_sde_on_ddpm_betas(reg):
    """score_sde's VP reverse diffusion with beta_i = 1 - abar_t/abar_s on DDPM's table (strided grid):
    x = (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z."""
    corr = reg.create("corruption", "gaussian", schedule="linear")
    grid = reg.create("time", "discrete", steps=1000).grid(40)
    x_T = torch.randn(200, 2, generator=gen(3), dtype=torch.float64)
    got: list = []
    S.reverse_diffusion(MIX.denoiser(corr), corr, grid, x_T, generator=gen(8), callback=record(got))
    abar, x, g = ddpm_alpha_bar(), x_T, gen(8)
    idx = torch.round(grid * 1000).long().tolist()
    for k, (n_t, n_s) in enumerate(zip(idx[:-1], idx[1:])):
        a_t = abar[n_t]
        x0 = MIX.posterior_mean(x, a_t.sqrt().expand(len(x)), (1 - a_t).sqrt().expand(len(x)))
        if n_s == 0:
            x = x0
        else:
            beta = 1 - a_t / abar[n_s]
            score = (a_t.sqrt() * x0 - x) / (1 - a_t)
            x = (2 - (1 - beta).sqrt()) * x + beta * score + beta.sqrt() * torch.randn(x.shape, generator=g,
                                                                                      dtype=x.dtype)
        assert float((got[k].x - x).abs().max()) < 1e-8, k


def ve_sigma(t: float) -> float:
    return 0.01 * math.sqrt(math.expm1(2 * math.log(50 / 0.01) * t))


def test_reverse_diffusion_is_score_sde_on_ve(reg):
    """VE: x = x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z."""
    corr = reg.create("corruption", "gaussian", schedule="ve")
    grid = reg.create("time", "continuous", t_min=1e-3).grid(25)
    x_T = torch.randn(200, 2, generator=gen(4), dtype=torch.float64) * 50
    got: list = []
    S.reverse_diffusion(MIX.denoiser(corr), corr, grid, x_T, generator=gen(9), callback=record(got))
    x, g = x_T, gen(9)
    ts = grid.tolist()
    for k, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        sig = torch.full((len(x),), ve_sigma(t), dtype=torch.float64)
        x0 = MIX.posterior_mean(x, torch.ones_like(sig), sig)
        if s == 0:
            x = x0
        else:
            var = ve_sigma(t) ** 2 - ve_sigma(s) ** 2
            x = x + var * (x0 - x) / ve_sigma(t) ** 2 + math.sqrt(var) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        assert float((got[k].x - x).abs().max()) < 1e-7 * 50, k


# ------------------------------------------------------------------------------------ EDM, Algorithm 2
def edm_loop(x: torch.Tensor, sigmas: list[float], g: torch.Generator, churn: float, s_tmin: float, s_tmax: float,
             s_noise: float) -> list[torch.Tensor]:
    """Karras et al. 2022, Algorithm 2, on the VE SDE (x~ = x, sigma = sigma_t), D = E[x_0 | x]."""
    def D(x, sigma):
        sig = torch.full((len(x),), sigma, dtype=torch.float64)
        return MIX.posterior_mean(x, torch.ones_like(sig), sig)

    n, out = len(sigmas) - 1, []
    for i in range(n):
        s_i, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= s_i <= s_tmax else 0.0
        s_hat = s_i * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s_i**2) * s_noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
        d = (x - D(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next != 0:
            d2 = (x_next - D(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (d + d2) / 2
        x = x_next
        out.append(x)
    return out


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_edm_is_karras_algorithm_2_on_ve(reg, churn):
    corr = reg.create("corruption", "gaussian", schedule="ve")
    grid = reg.create("time", "continuous", t_min=1e-3).grid(18)
    x_T = torch.randn(200, 2, generator=gen(5), dtype=torch.float64) * 50
    got: list = []
    S.edm(MIX.denoiser(corr), corr, grid, x_T, generator=gen(10), churn=churn, s_tmin=0.05, s_tmax=20.0,
          s_noise=1.007, callback=record(got))
    want = edm_loop(x_T, [ve_sigma(t) for t in grid.tolist()], gen(10), churn, 0.05, 20.0, 1.007)
    dev = max(float((u.x - w).abs().max()) for u, w in zip(got, want))
    assert len(got) == len(want) and dev < 1e-8, dev
    if churn:  # the churn draws noise: another seed moves the samples
        other = S.edm(MIX.denoiser(corr), corr, grid, x_T, generator=gen(11), churn=churn, s_tmin=0.05, s_tmax=20.0)
        assert float((other - got[-1].x).abs().max()) > 1e-3


def test_edm_without_churn_converges_at_second_order(reg):
    """Deterministic EDM (Algorithm 1) on VP, against a 320-step run: the error falls ~4x per halving of the step
    (orders measured 2.3 and 1.8; Euler in sigma, which is DDIM, is first order)."""
    corr = reg.create("corruption", "gaussian", schedule="vp")
    time = reg.create("time", "continuous", t_min=1e-3)
    x_T = torch.randn(200, 2, generator=gen(6), dtype=torch.float64)

    def state(steps):  # the state at t_min, before the last step returns x0_hat
        got: list = []
        S.edm(MIX.denoiser(corr), corr, time.grid(steps + 1, spacing="quadratic"), x_T, callback=record(got))
        return got[-2].x

    ref = state(320)
    errors = [float((state(n) - ref).abs().max()) for n in (10, 20, 40)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print(f"EDM Heun errors {errors}, orders {orders}")
    assert all(1.6 < o < 2.5 for o in orders), (errors, orders)


# ---------------------------------------------------------------------------- weak order of Euler-Maruyama
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_maruyama_is_weakly_first_order(reg, eta):
    """Gaussian data N(0, 0.25 I), VP SDE from the exact p_1 to t = 0.05: the error of E|x|^2 / 2 against the exact
    a^2 0.25 + s^2 falls like 1/N (orders measured from N = 12 to 48 with 100k samples, standard error 8.6e-4: 1.0 to
    1.4, approaching 1 from above)."""
    corr = reg.create("corruption", "gaussian", schedule="vp")
    gauss = GaussianMixture(torch.zeros(1, 2), torch.tensor([0.5]), torch.ones(1))
    n = 100_000
    x0 = gauss.sample(n, gen(1), dtype=torch.float64)
    one = corr.schedule(torch.ones(1, dtype=torch.float64))
    x1 = one.alpha * x0 + one.sigma * torch.randn(n, 2, generator=gen(2), dtype=torch.float64)
    end = corr.schedule(torch.tensor([0.05], dtype=torch.float64))
    exact = float(end.alpha**2 * 0.25 + end.sigma**2)
    se = exact * math.sqrt(2 / (2 * n))
    errors = []
    for steps in (12, 24, 48):
        x = S.sde(gauss.denoiser(corr), corr, torch.linspace(1, 0.05, steps + 1, dtype=torch.float64), x1,
                  generator=gen(3), eta=eta)
        errors.append(float(x.pow(2).mean()) - exact)
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print(f"eta {eta}: errors {errors} (se {se:.2g}), orders {orders}")
    assert min(errors) > 6 * se
    assert all(0.8 < o < 1.7 for o in orders), (errors, orders)


# ------------------------------------------------------------------------------------------ conformance
@pytest.mark.parametrize("schedule, time_name", [("linear", "discrete"), ("cosine", "continuous"),
                                                 ("ve", "continuous")])
def test_the_conformance_kit_passes_the_sde_samplers(reg, schedule, time_name):
    """With the oracle x0_hat = x_0 the reverse SDEs keep p(x_t | x_0) as the steps shrink: the kit's marginal and
    joint checks pass on 200 steps per chain for the Euler-Maruyama family (20 steps fail: KS D = 0.20 on |x|)
    and on 20 for EDM's Heun."""
    corr = reg.create("corruption", "gaussian", schedule=schedule)
    time = reg.create("time", time_name)
    x0 = torch.tensor([[0.8, -1.5, 0.3, 2.0]])
    for names, fine in ((["sde", "euler_maruyama", "reverse_diffusion"], 200), (["edm", "edm_stochastic"], 20)):
        report = udm.testing.assert_conforms(corr, x0, time_type=time, registry=reg, n=2000, fine_steps=fine,
                                             samplers=names)
        assert {f"marginal[{s}]" for s in names} <= {r.name for r in report.results}


# ------------------------------------------------------------------------------------------ bad input
def test_eta_below_zero_is_refused(reg):
    corr = reg.create("corruption", "gaussian")
    grid = reg.create("time", "continuous").grid(4)
    with pytest.raises(udm.ConfigError, match=r"sampler 'sde': eta must be a number >= 0; got -0\.5\. eta = 0 is the "
                                              r"probability-flow ODE, eta = 1 the reverse SDE"):
        S.sde(MIX.denoiser(corr), corr, grid, torch.zeros(2, 2), eta=-0.5)


def test_a_step_from_a_zero_amplitude_is_exact(reg):
    """Cosine reaches a = 0 at t = 1, where f = a'/a and g^2 are infinite: with eta > 0 (and reverse_diffusion) the
    first step is x_s = a_s x0_hat + s_s z, with the same draw z; with eta = 0 the probability-flow Euler step."""
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    grid = reg.create("time", "continuous").grid(4)
    x = torch.randn(500, 2, generator=gen(0), dtype=torch.float64)
    den = MIX.denoiser(corr)
    x0 = den(x, torch.ones(500, dtype=torch.float64))
    m = corr.marginal(grid[1:2], x)
    want = m.a * x0 + m.s * torch.randn(x.shape, generator=gen(1), dtype=x.dtype)
    for rule, options in ((S.sde, {"eta": 1.0}), (S.sde, {"eta": 0.3}), (S.reverse_diffusion, {})):
        got: list = []
        rule(den, corr, grid, x, generator=gen(1), callback=got.append, **options)
        assert float((got[0].x - want).abs().max()) < 1e-12
    a, b = [], []
    S.sde(den, corr, grid, x, eta=0.0, callback=a.append)
    S.ode(den, corr, grid, x, solver="euler", callback=b.append)
    assert max(float((u.x - v.x).abs().max()) for u, v in zip(a, b)) < 1e-10


def test_non_finite_coefficients_are_refused(reg, monkeypatch):
    """A corruption whose SDE coefficients are not finite at a grid time (here: a broken derivative) is an error
    naming the time, not NaN samples."""
    corr = reg.create("corruption", "gaussian", schedule="linear")
    grid = reg.create("time", "continuous").grid(4)
    sde = corr.sde
    monkeypatch.setattr(corr, "sde", lambda m: tuple(v * float("nan") for v in sde(m)))
    with pytest.raises(udm.CapabilityError, match=r"sampler 'sde': the step's coefficients must be finite at every "
                                                  r"grid time; got a non-finite value at t = 1 with corruption "
                                                  r"'gaussian'"):
        S.sde(MIX.denoiser(corr), corr, grid, torch.zeros(2, 2))


def test_edm_churn_needs_one_noise_level_per_time(reg):
    corr = reg.create("corruption", "blur")
    grid = reg.create("time", "continuous").grid(4)[1:]
    x = torch.zeros(2, 1, 8, 8)
    S.edm(lambda x_t, t, g=None: x_t, corr, grid, x)  # churn 0 works per coefficient
    with pytest.raises(udm.CapabilityError, match=r"sampler 'edm': churn > 0 needs one noise level sigma = s/a per "
                                                  r"time; got corruption 'blur'.*Use churn=0"):
        S.edm(lambda x_t, t, g=None: x_t, corr, grid, x, churn=5.0)
    # the preset with churn is not offered for blur, and asking for it names the samplers that are
    assert "edm_stochastic" not in udm.supported_samplers(corr, reg) and "edm" in udm.supported_samplers(corr, reg)
    with pytest.raises(udm.CapabilityError, match=r"sampler 'edm_stochastic': corruption 'blur' must offer "
                                                  r"linear_gaussian, schedule; it lacks schedule.*Samplers 'blur' "
                                                  r"supports: .*\bedm\b"):
        udm.sample(lambda x_t, t, g=None: x_t, corr, reg.create("time", "continuous"), shape=(2, 1, 8, 8),
                   sampler="edm_stochastic", steps=3, registry=reg)


@pytest.mark.parametrize("options, pattern", [
    ({"churn": -1.0}, r"churn must be a number >= 0; got -1\.0"),
    ({"s_noise": 0.0}, r"s_noise must be a number > 0; got 0\.0"),
    ({"s_tmin": 1.0, "s_tmax": 0.5}, r"s_tmax must be a number >= s_tmin, or None"),
])
def test_edm_options_are_checked(reg, options, pattern):
    corr = reg.create("corruption", "gaussian")
    grid = reg.create("time", "continuous").grid(4)
    with pytest.raises(udm.ConfigError, match=r"sampler 'edm': " + pattern):
        S.edm(MIX.denoiser(corr), corr, grid, torch.zeros(2, 2), **options)


def test_presets_and_model_calls(reg):
    corr = reg.create("corruption", "gaussian")
    time = reg.create("time", "continuous")
    assert reg.get("sampler", "euler_maruyama").options == {"eta": 1.0}
    for name, calls in (("sde", 10), ("euler_maruyama", 10), ("reverse_diffusion", 10), ("edm", 19),
                        ("edm_stochastic", 19)):
        steps: list = []
        udm.sample(MIX.denoiser(corr), corr, time, shape=(4, 2), sampler=name, steps=10, registry=reg,
                   generator=gen(0), callback=record(steps))
        assert steps[-1].nfe == calls == reg.get("sampler", name).calls(10), name
        assert not reg.get("sampler", name).exact_marginals
    for name in ("sde", "reverse_diffusion", "edm"):
        with pytest.raises(udm.CapabilityError, match=rf"sampler {name!r}: corruption 'mask' must offer linear_gaussian"):
            udm.resolve_sampler(name, reg.create("corruption", "mask", vocab_size=4), reg)
