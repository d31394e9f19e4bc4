"""The built-in schedules (plugins/schedules.py) against closed forms written here, finite differences,
their own inverses, the DDPM product table, and diffusers' schedulers; the interpolant of ``table``;
every constructor error."""

from __future__ import annotations

import json
import math
import typing

import pytest
import torch

import udm
from udm.config import _check_keys, plugin_schema
from udm.errors import ConfigError

F64 = torch.float64
COSINE_DALPHA_1 = -(math.pi / 2) / 1.008 / math.cos(0.008 / 1.008 * math.pi / 2)  # -1.5585, issue 18 item 1


def ddpm_betas(n=1000, start=1e-4, end=0.02) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=F64)


def cumprod_table(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_n, n = 0..N (alpha_bar_0 = 1), Ho et al. 2020."""
    return torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - betas, 0)])


def zero_snr_abar(n=20) -> list[float]:
    """A short table ending at alpha_bar = 0 (zero terminal SNR), rescaled as Lin et al. 2024 do, in float64."""
    root = cumprod_table(ddpm_betas(n, 1e-3, 0.3))[1:].sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return (root**2).tolist()


#: id -> (registered name, keyword arguments); every kind of schedule and every branch of each
CASES = {
    "linear": ("linear", {}),
    "linear-100": ("linear", dict(steps=100, beta_start=0.01, beta_end=0.3)),
    "linear-short": ("linear", dict(steps=10, beta_start=0.1, beta_end=0.5)),  # c - steps < 30: shifted series
    "linear-constant": ("linear", dict(steps=50, beta_start=0.01, beta_end=0.01)),
    "cosine": ("cosine", {}),
    "cosine-s0": ("cosine", dict(s=0.0)),
    "vp": ("vp", {}),
    "ve": ("ve", {}),
    "flow": ("flow", {}),
    "table-betas": ("table", dict(betas=ddpm_betas(1000).tolist())),
    "table-short": ("table", dict(betas=ddpm_betas(10, 0.05, 0.4).tolist())),
    "table-zero-snr": ("table", dict(alphas_cumprod=zero_snr_abar())),
    # abrupt steps: the fourth-order slopes overshoot here unless the monotone limiter holds them
    "table-rough": ("table", dict(betas=[0.02] * 4 + [0.9] + [0.01] * 5 + [0.6, 0.001, 0.3] + [0.02] * 3)),
}
VP_CASES = [k for k, (name, _) in CASES.items() if name not in ("ve", "flow")]
ALPHA_ZERO_AT_1 = ["cosine", "cosine-s0", "flow", "table-zero-snr"]


@pytest.fixture(scope="module", params=list(CASES))
def case(request, reg):
    name, kwargs = CASES[request.param]
    return request.param, reg.create("schedule", name, **kwargs)


def grid(n=2001) -> torch.Tensor:
    return torch.linspace(0, 1, n, dtype=F64)


# ----------------------------------------------------------------------------------- registry
def test_the_six_schedules_are_registered_and_created_by_name(reg):
    assert reg.names("schedule") == ["cosine", "flow", "linear", "table", "ve", "vp"]
    assert reg.provider("schedule", "cosine").name == "schedules"
    sch = reg.create("schedule", "cosine", s=0.008)
    assert isinstance(sch, udm.Schedule) and sch.s == 0.008 and repr(sch) == "cosine(s=0.008)"
    with pytest.raises(ConfigError, match=r"schedule 'cosine': keyword arguments must match its signature"):
        reg.create("schedule", "cosine", cosine_s=0.008)


def test_choice_arguments_are_literals_so_udm_check_catches_typos(reg):
    from udm.plugins import table_schedule

    assert set(typing.get_args(table_schedule.BetaSchedule)) == set(table_schedule._DIFFUSERS_BETAS)
    schema = plugin_schema(reg, "schedule", "table")
    _check_keys("exp.yaml", "schedule", {"beta_schedule": "scaled_linear"}, schema)
    with pytest.raises(ConfigError, match=r"exp\.yaml: schedule\.beta_schedule: the value must be one of 'linear', "
                                          r"'scaled_linear', 'squaredcos_cap_v2' or None; got 'scaled_linaer'"):
        _check_keys("exp.yaml", "schedule", {"beta_schedule": "scaled_linaer"}, schema)


# --------------------------------------------------------------------------------------- ends
def test_ends_monotonicity_and_variance_preservation(case):
    key, sch = case
    t = grid()
    alpha, sigma = sch.amplitudes(t)
    assert alpha.dtype == sigma.dtype == F64 and alpha.shape == t.shape
    assert alpha[0] == 1.0 and sigma[0] == 0.0 and not math.copysign(1, float(sigma[0])) < 0  # +0, not -0
    if key in ALPHA_ZERO_AT_1:
        assert alpha[-1] == 0.0 and sch.log_snr(torch.ones(1, dtype=F64)) == -math.inf
    else:
        assert alpha[-1] > 0
    assert sch.log_snr(torch.zeros(1, dtype=F64)) == math.inf
    if key == "ve":
        assert bool((alpha == 1).all())
    else:
        assert bool((alpha.diff() < 0).all())
    assert bool((sigma.diff() > 0).all())
    if key in VP_CASES:
        assert float((alpha**2 + sigma**2 - 1).abs().max()) < 1e-15
    lam = sch.log_snr(t)
    assert bool((lam.diff() < 0).all())
    assert torch.allclose(lam[1:-1], 2 * torch.log(alpha[1:-1] / sigma[1:-1]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,alpha,sigma", [
    ("cosine", {}, lambda t: torch.cos((t + 0.008) / 1.008 * math.pi / 2) / math.cos(0.008 / 1.008 * math.pi / 2),
     None),
    ("vp", {}, lambda t: torch.exp(-0.1 * t / 2 - (20 - 0.1) * t**2 / 4), None),
    ("ve", {}, lambda t: torch.ones_like(t), lambda t: (0.01**2 * ((50 / 0.01) ** (2 * t) - 1)).sqrt()),
    ("flow", {}, lambda t: 1 - t, lambda t: t),
])
def test_amplitudes_match_the_papers_formulas(reg, name, kwargs, alpha, sigma):
    t = torch.linspace(0, 0.999, 1000, dtype=F64)
    a, s = reg.create("schedule", name, **kwargs).amplitudes(t)
    assert torch.allclose(a, alpha(t), rtol=1e-12, atol=1e-15)
    ref = sigma(t) if sigma else (1 - alpha(t) ** 2).sqrt()
    assert torch.allclose(s, ref, rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------------------------- derivatives
def fd(fn, t: torch.Tensor, h: float, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-order finite differences of both amplitudes: central, forward or backward."""
    if side == "central":
        (ap, sp), (am, sm) = fn(t + h), fn(t - h)
        return (ap - am) / (2 * h), (sp - sm) / (2 * h)
    sign = 1 if side == "forward" else -1
    (a0, s0), (a1, s1), (a2, s2) = fn(t), fn(t + sign * h), fn(t + 2 * sign * h)
    return sign * (-3 * a0 + 4 * a1 - a2) / (2 * h), sign * (-3 * s0 + 4 * s1 - s2) / (2 * h)


def close(x: torch.Tensor, y: torch.Tensor, rtol: float) -> bool:
    return bool(((x - y).abs() <= rtol * (1 + y.abs())).all())


def test_derivatives_match_finite_differences_inside(case):
    _, sch = case
    t = torch.linspace(0.01, 0.99, 99, dtype=F64) + 1.234e-4  # off the table's knots
    da, ds = sch.derivatives(t)
    fa, fs = fd(sch.amplitudes, t, 1e-6, "central")
    assert close(da, fa, 1e-6) and close(ds, fs, 1e-6)
    full = sch(t)
    assert torch.equal(full.dalpha, da) and torch.equal(full.dsigma, ds) and torch.equal(full.alpha, sch.amplitudes(t)[0])


def test_derivatives_at_t1_match_one_sided_differences(case):
    key, sch = case
    one = torch.ones(1, dtype=F64)
    da, ds = sch.derivatives(one)
    fa, fs = fd(sch.amplitudes, one, 1e-6, "backward")
    assert close(da, fa, 1e-6) and close(ds, fs, 1e-6)
    assert bool(torch.isfinite(da).all() and torch.isfinite(ds).all())


def test_derivatives_at_t0_match_one_sided_differences(case):
    """d alpha/dt(0) from forward differences; sigma ~ sqrt(c t) at 0 except for flow, so d sigma/dt(0) = +inf,
    and the finite quantity d sigma^2/dt(0) = lim 2 sigma sigma' is checked instead."""
    key, sch = case
    zero = torch.zeros(1, dtype=F64)
    da, ds = sch.derivatives(zero)
    fa, fs = fd(sch.amplitudes, zero, 1e-6, "forward")
    assert close(da, fa, 1e-6)
    if key in ("flow", "cosine-s0"):
        assert close(ds, fs, 1e-6)
        return
    assert ds == math.inf
    tiny = torch.full((1,), 1e-200, dtype=F64)
    s_tiny, ds_tiny = sch.amplitudes(tiny)[1], sch.derivatives(tiny)[1]
    fa2, fs2 = fd(lambda u: tuple(v**2 for v in sch.amplitudes(u)), zero, 1e-7, "forward")
    assert close(2 * s_tiny * ds_tiny, fs2, 1e-5)


def test_cosine_dalpha_at_t1_is_not_zero_issue_18(reg):
    sch = reg.create("schedule", "cosine")
    out = sch(torch.tensor([1.0, 1 - 1e-9], dtype=F64))
    assert torch.allclose(out.dalpha, torch.full((2,), COSINE_DALPHA_1, dtype=F64), rtol=1e-8)
    assert round(COSINE_DALPHA_1, 4) == -1.5585
    assert out.alpha[0] == 0.0 and out.sigma[0] == 1.0 and abs(float(out.dsigma[0])) < 1e-15


@pytest.mark.parametrize("steps,start,end", [(1000, 1e-4, 0.02), (10, 0.1, 0.5)])
def test_linear_derivative_equals_the_digamma_form(reg, steps, start, end):
    """The series' derivative against d/dn log alpha_bar = log d + psi(c - n), evaluated here."""
    sch = reg.create("schedule", "linear", steps=steps, beta_start=start, beta_end=end)
    d = (end - start) / (steps - 1)
    c = (1 - start + d) / d
    n = torch.linspace(0, steps, 1001, dtype=F64)
    dy_dn = math.log(d) + torch.special.digamma(c - n)
    alpha, sigma = sch.amplitudes(n / steps)
    da, _ = sch.derivatives(n / steps)
    assert float((2 * da / alpha / steps - dy_dn).abs().max()) < 1e-12


def test_no_nan_and_small_t_keep_their_digits(case):
    """sigma ~ sqrt(c t) near 0 (flow and cosine with s = 0: sigma ~ c t): finite, positive and following that
    power law to 1e-6 down to t = 1e-300, as does lambda = log(alpha^2 / sigma^2)."""
    key, sch = case
    t = torch.logspace(-300, -6, 295, dtype=F64)
    alpha, sigma = sch.amplitudes(t)
    lam = sch.log_snr(t)
    assert bool(torch.isfinite(sigma).all() and (sigma > 0).all() and torch.isfinite(lam).all())
    power = 1.0 if key in ("flow", "cosine-s0") else 0.5
    log_c = torch.log(sigma) - power * torch.log(t)  # -> log of sigma / t^power at t = 0
    assert float((log_c - log_c[0]).abs()[:-10].max()) < 1e-6, key
    assert float((lam + 2 * power * torch.log(t) + 2 * log_c - 2 * torch.log(alpha)).abs().max()) < 1e-9


# ------------------------------------------------------------------------------------- inverse
def test_t_of_log_snr_inverts_log_snr(case):
    key, sch = case
    t = torch.cat([torch.tensor([0.0, 1e-12, 1e-9, 1e-6], dtype=F64), grid(1001),
                   torch.tensor([1 - 1e-6, 1 - 1e-9], dtype=F64)])
    back = sch.t_of_log_snr(sch.log_snr(t))
    assert float((back - t).abs().max()) < 1e-10, key
    assert float(((back - t).abs() / t.clamp_min(1e-300))[1:4].max()) < 1e-6  # small t keep their digits


def test_log_snr_inverts_t_of_log_snr(case):
    key, sch = case
    one = torch.ones(1, dtype=F64)
    lam_end = float(sch.log_snr(one))
    lam = torch.linspace(max(-30.0, lam_end + 1e-3), 30.0, 601, dtype=F64)
    t = sch.t_of_log_snr(lam)
    assert bool(((t >= 0) & (t <= 1)).all())
    assert float((sch.log_snr(t) - lam).abs().max()) < 1e-8, key
    # outside [lambda(1), lambda(0)] the nearer end; the ends themselves map to the ends
    assert sch.t_of_log_snr(torch.tensor([math.inf], dtype=F64)) == 0.0
    assert sch.t_of_log_snr(torch.tensor([-math.inf], dtype=F64)) == 1.0
    if lam_end > -math.inf:
        assert sch.t_of_log_snr(torch.tensor([lam_end - 5], dtype=F64)) == 1.0


def test_cosine_log_snr_spacing_reaches_its_t1_end(reg):
    """lambda(1) = -inf for cosine: a log-SNR grid down to -70 is spread out, not piled up at -40 (issue 18 item 5)."""
    sch = reg.create("schedule", "cosine")
    lam = torch.arange(70.0, -71.0, -1.0, dtype=F64)
    t = sch.t_of_log_snr(lam)
    assert bool((t.diff() > 0).all()) and float(t[-1]) < 1.0
    # alpha ~ (1 - t) k / cos(theta_0) near t = 1, so 1 - t(-70) ~ e^-35 / 1.5585
    assert math.isclose(1 - float(t[-1]), math.exp(-35) / -COSINE_DALPHA_1, rel_tol=0.3)
    inner = lam.abs() <= 30
    assert float((sch.log_snr(t[inner]) - lam[inner]).abs().max()) < 1e-8


# ----------------------------------------------------------------------------- expanded tensors
def test_expanded_time_tensors_work_for_every_method(case):
    _, sch = case
    t = torch.tensor([0.5]).expand(4)
    ref = torch.full((4,), 0.5, dtype=F64)
    for method in (sch.amplitudes, sch.derivatives):
        for got, want in zip(method(t), method(ref)):
            assert got.shape == (4,) and got.dtype == F64 and torch.equal(got, want)
    out = sch(t)
    assert out.alpha.shape == out.dsigma.shape == (4,)
    lam = sch.log_snr(t)
    assert torch.equal(lam, sch.log_snr(ref))
    assert torch.equal(sch.t_of_log_snr(lam[:1].expand(4)), sch.t_of_log_snr(lam))


# ---------------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("kwargs,log_tol", [({}, 5e-13), (dict(steps=100, beta_start=0.01, beta_end=0.3), 5e-14),
                                            (dict(steps=10, beta_start=0.1, beta_end=0.5), 1e-14),
                                            (dict(steps=3, beta_start=0.3, beta_end=0.9), 1e-14),
                                            (dict(steps=50, beta_start=0.01, beta_end=0.01), 1e-14)])
def test_linear_equals_the_cumprod_table_at_every_integer_step(reg, kwargs, log_tol):
    """alpha_bar to 2e-13, and log alpha_bar against the sum of log1p(-beta_i) (DDPM's c ~ 5e4 costs ~1e-13)."""
    sch = reg.create("schedule", "linear", **kwargs)
    steps = sch.steps
    kw = dict(steps=1000, beta_start=1e-4, beta_end=0.02) | kwargs
    betas = ddpm_betas(kw["steps"], kw["beta_start"], kw["beta_end"])
    abar = cumprod_table(betas)
    t = torch.arange(steps + 1, dtype=F64) / steps
    alpha, sigma = sch.amplitudes(t)
    assert float((alpha**2 - abar).abs().max()) < 2e-13
    assert float((sigma**2 - (1 - abar)).abs().max()) < 2e-13
    log_abar = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(torch.log1p(-betas), 0)])
    assert float((2 * torch.log(alpha) - log_abar).abs().max()) < log_tol


# ----------------------------------------------------------------------------------------- table
def test_table_is_exact_at_its_points_and_follows_the_index_convention(reg):
    abar = cumprod_table(ddpm_betas(10, 0.05, 0.4))
    sch = reg.create("schedule", "table", alphas_cumprod=abar[1:].tolist())
    assert sch.steps == 10 and torch.equal(sch.alphas_cumprod, abar[1:])
    alpha, sigma = sch.amplitudes(torch.arange(11, dtype=F64) / 10)  # entry k at t = (k + 1) / N
    assert float((alpha**2 - abar).abs().max()) < 1e-15
    assert float((sigma**2 - (1 - abar)).abs().max()) < 1e-15
    from_betas = reg.create("schedule", "table", betas=ddpm_betas(10, 0.05, 0.4).tolist())
    assert torch.allclose(from_betas.alphas_cumprod, abar[1:], rtol=1e-15, atol=0)


@pytest.mark.parametrize("key", ["table-betas", "table-short", "table-zero-snr", "table-rough"])
def test_table_interpolant_is_c1_and_monotone(reg, key):
    name, kwargs = CASES[key]
    sch = reg.create("schedule", name, **kwargs)
    n = sch.steps
    knots = torch.arange(1, n, dtype=F64) / n
    left, right = sch.derivatives(knots - 1e-11), sch.derivatives(knots + 1e-11)  # second derivatives < ~1e4
    for lv, rv in zip(left, right):
        assert float(((lv - rv).abs() / rv.abs()).max()) < 1e-6
    fine = torch.linspace(0, 1, 50 * n + 1, dtype=F64)
    alpha, sigma = sch.amplitudes(fine)
    assert bool((alpha.diff() < 0).all()) and bool((sigma.diff() > 0).all())
    da, ds = sch.derivatives(fine)
    assert bool((da <= 0).all()) and bool((ds[1:] >= 0).all())


def test_table_with_zero_terminal_snr_ends_at_alpha_zero(reg):
    abar = zero_snr_abar()
    sch = reg.create("schedule", "table", alphas_cumprod=abar)
    t = torch.arange(21, dtype=F64) / 20
    alpha, _ = sch.amplitudes(t)
    assert float((alpha**2 - torch.tensor([1.0] + abar, dtype=F64)).abs().max()) < 1e-15
    assert alpha[-1] == 0.0 and sch.t_of_log_snr(torch.tensor([-40.0], dtype=F64)) < 1.0


def compare(got: udm.AffineSchedule, want: udm.AffineSchedule) -> dict[str, tuple[float, float]]:
    """Largest absolute and relative differences of each field."""
    out = {}
    for k in ("alpha", "sigma", "dalpha", "dsigma"):
        g, w = getattr(got, k), getattr(want, k)
        out[k] = (float((g - w).abs().max()), float(((g - w) / w).abs().max()))
    return out


def test_table_from_diffusers_linear_betas_equals_linear(reg):
    diffusers = pytest.importorskip("diffusers", reason="the table tests compare with diffusers: pip install -e '.[test]'")
    betas = diffusers.DDPMScheduler().betas  # float32, as diffusers computes them
    table = reg.create("schedule", "table", betas=betas.tolist())
    linear = reg.create("schedule", "linear")
    t = torch.linspace(0, 1, 100001, dtype=F64)[1:]  # between the points too
    diff = compare(table(t), linear(t))
    assert diff["alpha"][0] < 1e-7 and diff["sigma"][0] < 1e-7
    assert diff["dalpha"][1] < 1e-6 and diff["dsigma"][1] < 1e-6  # float32 betas: ~3e-8 each, times N
    assert float((table.log_snr(t) - linear.log_snr(t)).abs().max()) < 1e-6


def test_table_interpolant_follows_a_smooth_table_to_fourth_order(reg):
    """With exact (float64) DDPM betas, the interpolant reproduces linear's exact extension between the points."""
    table = reg.create("schedule", "table", betas=ddpm_betas(1000).tolist())
    linear = reg.create("schedule", "linear")
    t = torch.linspace(0, 1, 100001, dtype=F64)[1:]
    diff = compare(table(t), linear(t))
    assert all(rel < 1e-10 for _, rel in diff.values()), diff
    assert float((table.log_snr(t) - linear.log_snr(t)).abs().max()) < 1e-10


@pytest.mark.parametrize("kwargs", [dict(beta_schedule="squaredcos_cap_v2"),
                                    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                    dict(beta_schedule="linear", num_train_timesteps=200),
                                    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         rescale_betas_zero_snr=True)])
def test_table_reproduces_diffusers_alphas_cumprod(reg, kwargs):
    diffusers = pytest.importorskip("diffusers", reason="the table tests compare with diffusers: pip install -e '.[test]'")
    ref = diffusers.DDPMScheduler(**kwargs)
    sch = reg.create("schedule", "table", **kwargs)
    assert torch.equal(sch.alphas_cumprod, ref.alphas_cumprod.to(F64))  # bit for bit, float32 as diffusers
    n = sch.steps
    alpha, sigma = sch.amplitudes(torch.arange(1, n + 1, dtype=F64) / n)
    assert float((alpha**2 - ref.alphas_cumprod.to(F64)).abs().max()) < 1e-15
    if kwargs["beta_schedule"] == "squaredcos_cap_v2":  # the last beta is clipped at 0.999
        assert float(ref.betas[-1]) == pytest.approx(0.999) and float(ref.betas[-2]) < 0.999
        last = 1 - sch.alphas_cumprod[-1] / sch.alphas_cumprod[-2]
        assert float(last) == pytest.approx(0.999, abs=1e-6)


def test_table_from_a_saved_scheduler_config(reg, tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="the table tests compare with diffusers: pip install -e '.[test]'")
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type="v_prediction", timestep_spacing="trailing",
                                  rescale_betas_zero_snr=True)
    ref.save_config(tmp_path)
    for config in (str(tmp_path), str(tmp_path / "scheduler_config.json"), dict(ref.config)):
        sch = reg.create("schedule", "table", config=config)
        assert torch.equal(sch.alphas_cumprod, ref.alphas_cumprod.to(F64)) and sch.steps == 1000
        assert sch.prediction_type == "v_prediction" and sch.timestep_spacing == "trailing"
        assert sch.amplitudes(torch.ones(1, dtype=F64))[0] == 0.0  # zero terminal SNR
    trained = diffusers.DDPMScheduler(trained_betas=ddpm_betas(30, 1e-3, 0.2).tolist())
    trained.save_config(tmp_path / "trained")
    sch = reg.create("schedule", "table", config=str(tmp_path / "trained"))
    assert torch.equal(sch.alphas_cumprod, trained.alphas_cumprod.to(F64)) and sch.steps == 30


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,kwargs,message", [
    ("linear", dict(steps=1), r"schedule linear: steps must be an integer >= 2; got 1\. DDPM uses steps=1000\."),
    ("linear", dict(beta_start=0.02, beta_end=1e-4),
     r"schedule linear: beta_start and beta_end must satisfy 0 < beta_start <= beta_end < 1; got beta_start=0\.02, "
     r"beta_end=0\.0001\. DDPM uses"),
    ("linear", dict(beta_start=-1e-4), r"schedule linear: beta_start and beta_end must satisfy .*got beta_start=-0\."),
    ("linear", dict(steps=100),
     r"schedule linear: beta_start must be >= about \(beta_end - beta_start\) / \(2 \(steps - 1\)\) so that "
     r"alpha_bar decreases between the steps too; got beta_start=0\.0001 with \(beta_end - beta_start\) / "
     r"\(steps - 1\) = 0\.000201\. Raise beta_start or steps, or use schedule table"),
    ("cosine", dict(s=-0.1), r"schedule cosine: s must be a finite number >= 0; got -0\.1\. Nichol & Dhariwal use"),
    ("vp", dict(beta_min=-0.1), r"schedule vp: beta_min and beta_max must satisfy 0 <= beta_min <= beta_max, "
                                r"beta_max > 0; got beta_min=-0\.1, beta_max=20\.0\. Song et al\. use"),
    ("vp", dict(beta_min=30.0), r"schedule vp: beta_min and beta_max must satisfy .*got beta_min=30\.0"),
    ("ve", dict(sigma_min=0.0), r"schedule ve: sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max; got "
                                r"sigma_min=0\.0, sigma_max=50\.0\. Song et al\. use"),
    ("ve", dict(sigma_min=80.0), r"schedule ve: sigma_min and sigma_max must satisfy .*got sigma_min=80\.0"),
    ("table", dict(betas=[0.1], alphas_cumprod=[0.9]),
     r"schedule table: exactly one of betas, alphas_cumprod, config, beta_schedule must be given; got betas, "
     r"alphas_cumprod\. Pass a list of betas"),
    ("table", {}, r"schedule table: exactly one of .* must be given; got none\."),
    ("table", dict(betas=[0.1, 0.2], num_train_timesteps=2),
     r"schedule table: num_train_timesteps must be given only with beta_schedule; got num_train_timesteps=2 with "
     r"betas\. Remove them"),
    ("table", dict(betas=[0.1, 1.0, 0.2]),
     r"schedule table: betas must be a non-empty list of values in \(0, 1\) \(the last may be 1: zero terminal "
     r"SNR\); got 1\.0 at index 1\. beta_n = "),
    ("table", dict(betas=[0.1, -0.2]), r"schedule table: betas must be .*; got -0\.2 at index 1\."),
    ("table", dict(betas=[]), r"schedule table: betas must be a non-empty list .*; got shape \(0,\)\."),
    ("table", dict(alphas_cumprod=[0.9, 0.95, 0.5]),
     r"schedule table: alphas_cumprod must be a non-empty, strictly decreasing list of values in \(0, 1\) \(the last "
     r"may be 0: zero terminal SNR\); got 0\.95 at index 1\. Entry k is alpha_bar at step n = k \+ 1"),
    ("table", dict(alphas_cumprod=[1.0, 0.5]), r"schedule table: alphas_cumprod must be .*; got 1\.0 at index 0\."),
    ("table", dict(alphas_cumprod=[0.5, 0.0, 0.0]), r"schedule table: alphas_cumprod must be .*; got 0\.0 at index 1\."),
    ("table", dict(beta_schedule="sigmoid"),
     r"schedule 'table': beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2' or None; got "
     r"'sigmoid'\."),
])
def test_constructor_errors(reg, name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        reg.create("schedule", name, **kwargs)


def test_config_errors(reg, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"schedule table: config must be a readable diffusers "
                                          r"scheduler_config\.json \(or a folder holding one\); got '.*nowhere' "
                                          r"\(FileNotFoundError: .*\)\. Write one with scheduler\.save_config"):
        reg.create("schedule", "table", config=str(missing))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config must be a readable .*got '.*bad\.json' \(JSONDecodeError: "):
        reg.create("schedule", "table", config=str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"schedule table: config '.*list\.json' must hold a JSON object; got list\."):
        reg.create("schedule", "table", config=str(tmp_path / "list.json"))
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    (tmp_path / "flow.json").write_text(json.dumps(flow))
    with pytest.raises(ConfigError, match=r"schedule table: config '.*flow\.json' must define beta_schedule or "
                                          r"trained_betas \(a DDPM-family scheduler\); got neither \(class "
                                          r"FlowMatchEulerDiscreteScheduler\)\. Use another udm schedule"):
        reg.create("schedule", "table", config=str(tmp_path / "flow.json"))
    (tmp_path / "sigmoid.json").write_text(json.dumps({"beta_schedule": "sigmoid"}))
    with pytest.raises(ConfigError, match=r"schedule table: beta_schedule \(in config '.*sigmoid\.json'\) must be one "
                                          r"of 'linear', 'scaled_linear', 'squaredcos_cap_v2'; got 'sigmoid'\."):
        reg.create("schedule", "table", config=str(tmp_path / "sigmoid.json"))
    with pytest.raises(ConfigError, match=r"schedule table: beta_start must be given only with beta_schedule; got "
                                          r"beta_start=0\.001 with config\. Remove them: the config file sets them\."):
        reg.create("schedule", "table", config=str(tmp_path / "sigmoid.json"), beta_start=0.001)
