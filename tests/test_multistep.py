"""The multistep solvers (``udm.samplers.multistep``): theory checks that need no reference implementation.

* order 1 of every method is DDIM (``invert``); DPM-Solver++(3M) equals UniP-3 (bh2), two derivations of the
  exact exponential integrator of a quadratic x0(lambda);
* log-log error vs model calls on a Gaussian mixture with the exact denoiser: slopes 1 (DDIM), 2 (2M), 3 (3M),
  and one more with UniPC's corrector;
* per-coefficient log-SNR: a basis-diagonal corruption is solved coefficient by coefficient (each as its own
  scalar corruption), also where some coefficient's log-SNR is -inf; ``blur`` is that in the DCT basis;
* q_theta draws enter D once; bad input, and fewer steps than the order.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import udm
from udm import samplers as S
from udm.testing import GaussianMixture

F64 = torch.float64
RING = GaussianMixture.ring(k=8, radius=2.0, std=0.5)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cosine(reg):
    return reg.create("corruption", "gaussian", schedule="cosine")


def lam_grid(schedule, n: int, lo: float = -12.0, hi: float = 2.0) -> torch.Tensor:
    """n + 1 times uniform in log(alpha^2/sigma^2) from lo to hi (no step to t = 0)."""
    return schedule.t_of_log_snr(lo + (hi - lo) * torch.arange(n + 1, dtype=F64) / n)


def x_start(corr, grid, n=200, seed=0):
    return torch.randn(n, 2, generator=gen(seed), dtype=F64) * float(corr.noise_schedule.amplitudes(grid[:1])[1])


# ----------------------------------------------------------------------------------- identities
@pytest.mark.parametrize("method", ["dpm++", "unipc", "deis"])
def test_first_order_is_ddim(cosine, method):
    den = RING.denoiser(cosine)
    grid = lam_grid(cosine.noise_schedule, 12, -6, 4)
    x = x_start(cosine, grid)
    want = S.invert(den, cosine, grid, x)
    got = S.multistep(den, cosine, grid, x, method=method, order=1)
    assert float((got - want).abs().max()) < 1e-12


def test_dpm3m_equals_unip3_and_2m_equals_unip2(cosine):
    """UniPC's bh2 predictor solves a linear system for its weights; udm's DPM-Solver++ integrates the Lagrange
    polynomial against the exponential kernel in closed form. Both are the exact integrator of the polynomial
    through the history, so they agree to rounding on any grid (here quadratic in t, so every step differs)."""
    den = RING.denoiser(cosine)
    grid = torch.cat([0.995 * torch.linspace(1, 0, 15, dtype=F64)[:-1] ** 2 + 0.004, torch.zeros(1, dtype=F64)])
    x = x_start(cosine, grid)
    for order in (2, 3):
        a = S.multistep(den, cosine, grid, x, method="dpm++", order=order)
        b = S.multistep(den, cosine, grid, x, method="unipc", order=order)
        assert float((a - b).abs().max()) < 1e-11, order


# --------------------------------------------------------------------------------------- orders
def slope(ns, errs) -> float:
    lx = torch.tensor([math.log(n) for n in ns], dtype=F64)
    ly = torch.tensor([math.log(e) for e in errs], dtype=F64)
    return -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


@pytest.fixture(scope="module")
def order_errors(cosine):
    """RMS error at t(lambda = 2) after N steps uniform in log-SNR from lambda = -12, against 3M on 3000 steps
    (its own error there, ~5e-9 against 6000 steps, is far below the smallest error measured, 2e-7). Starting
    at low SNR keeps the first-order warm-up step's O(h^2) error (x0_hat barely moves there) below each
    method's own order up to N = 192 (from lambda = -4 the warm-up caps 3M at slope 2)."""
    den = RING.denoiser(cosine)
    x = x_start(cosine, lam_grid(cosine.noise_schedule, 1))
    ref = S.multistep(den, cosine, lam_grid(cosine.noise_schedule, 3000), x, order=3, lower_order_final=False)
    ns = (24, 48, 96, 192)
    cases = {"ddim": dict(order=1), "2m": dict(order=2), "3m": dict(order=3), "deis2": dict(method="deis", order=2),
             "deis3": dict(method="deis", order=3), "unip1": dict(method="unipc", order=1),
             "unipc1": dict(method="unipc", order=1, unic=True), "unip2": dict(method="unipc", order=2),
             "unipc2": dict(method="unipc", order=2, unic=True),
             "unipc2_bh1": dict(method="unipc", order=2, unic=True, variant="bh1")}
    out = {}
    for name, opts in cases.items():
        errs = []
        for n in ns:
            x_n = S.multistep(den, cosine, lam_grid(cosine.noise_schedule, n), x, lower_order_final=False, **opts)
            errs.append(float((x_n - ref).pow(2).mean().sqrt()))
        out[name] = (slope(ns, errs), errs)
        print(f"{name:10s} slope {out[name][0]:.2f} errors {[f'{e:.2e}' for e in errs]}")
    return out


# nominal order: measured fitted slopes over N = 24..192 lie within [p - 0.05, p + 0.35] (pre-asymptotic terms
# of order N^-(p+1) steepen them); the band [p - 0.25, p + 0.45] excludes both neighbouring orders, so a weight
# that loses an order (diffusers' 3M D2 weight: slope 2.07) or a corrector that does nothing fails.
ORDERS = {"ddim": 1, "2m": 2, "3m": 3, "deis2": 2, "deis3": 3, "unip1": 1, "unipc1": 2, "unip2": 2, "unipc2": 3,
          "unipc2_bh1": 3}


@pytest.mark.parametrize("name", list(ORDERS))
def test_error_vs_model_calls_has_the_method_order(order_errors, name):
    s, errs = order_errors[name]
    assert ORDERS[name] - 0.25 < s < ORDERS[name] + 0.45, (name, s, errs)


@pytest.mark.parametrize("p", [1, 2])
def test_unipc_corrector_raises_the_order_by_one(order_errors, p):
    plain, corrected = order_errors[f"unip{p}"][0], order_errors[f"unipc{p}"][0]
    assert 0.8 < corrected - plain < 1.4, (plain, corrected)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_3m_sde_weights_integrate_a_quadratic_exactly_against_the_sde_kernel(eta):
    """With refresh eta the step's kernel on [0, h] is e^{-c (h - v)} with e^{-c h} = sqrt(1 - eta^2 + eta^2 e^{-2h})
    e^{-h} (c = 2 for eta = 1: DPM-Solver++'s SDE); 3M's weights on the nodes 0, d_1, d_2 must give the kernel
    average of any quadratic f(v) (trapezoid quadrature on 2e5 intervals, error ~1e-11)."""
    from udm.samplers._weights import dpm_weights, effective_rate

    h = torch.tensor([0.7, 0.3], dtype=F64)
    d = [torch.tensor([-0.5, -0.2], dtype=F64), torch.tensor([-1.1, -0.5], dtype=F64)]
    c = effective_rate(h, eta)
    torch.testing.assert_close(torch.exp(-c * h), torch.sqrt(1 - eta**2 + eta**2 * torch.exp(-2 * h)) * torch.exp(-h))

    def f(v):
        return 1 + 2 * v - 3 * v**2

    w = dpm_weights(3, h, d, eta=eta)
    got = w[0] * f(torch.zeros_like(h)) + w[1] * f(d[0]) + w[2] * f(d[1])
    v = torch.linspace(0, 1, 200_001, dtype=F64)[:, None] * h
    kernel = torch.exp(-c * (h - v))
    want = torch.trapezoid(kernel * f(v), v, dim=0) / torch.trapezoid(kernel, v, dim=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------- per basis coefficient
class _Decaying(udm.LinearGaussian):
    """a_k(t) = alpha_t exp(-c_k tau(t)), s_k(t) = sigma_t, tau = 40 t^2 (blur-like), cosine alpha/sigma: with
    c = 40 the coefficient's a underflows to exactly 0 near t = 1 (log-SNR -inf at the first grid points)."""

    name = "decaying"

    def __init__(self, c):
        super().__init__(prediction="x0")
        self.c = torch.as_tensor(c, dtype=F64)
        self.cos = udm.load_registry().create("schedule", "cosine")

    def amplitudes(self, t, shape):
        alpha, sigma = self.cos.amplitudes(t.to(F64))
        a = alpha[:, None] * torch.exp(-self.c[None] * 40 * t.to(F64)[:, None] ** 2)
        return (a if self.c.ndim else a[:, 0]), sigma


def diag_denoiser(corr, mean, var):
    """The exact E[x_0 | x_t] for x_0 ~ N(mean, diag(var)), per coefficient of an identity-basis corruption."""
    def den(x, t, g=None):
        m = corr.marginal(t[:1], x)
        a, s = m.a64, m.s64
        return (mean + a * var / (a * a * var + s * s) * (x - a * mean)).to(x.dtype)
    return den


@pytest.mark.parametrize("opts", [dict(method="dpm++", order=3), dict(method="unipc", order=2, unic=True),
                                  dict(method="deis", order=3)], ids=["3m", "unipc", "deis3"])
def test_per_coefficient_weights_solve_each_coefficient_on_its_own(opts):
    """lambda, h and the weights are per coefficient: one run on K coefficients equals K scalar runs."""
    c = [0.0, 0.05, 0.5, 40.0]
    mean, var = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=F64), torch.tensor([0.04, 1.0, 0.25, 2.0], dtype=F64)
    grid = torch.cat([torch.linspace(1, 0.02, 9, dtype=F64), torch.zeros(1, dtype=F64)])
    x = torch.randn(50, 4, generator=gen(1), dtype=F64)
    joint = _Decaying(c)
    lam = S._weights.half_log_snr(joint.grid_table(grid, x))[0]
    assert bool(torch.isinf(lam[:2, 3]).all()) and bool(torch.isfinite(lam[1:-1, :3]).all())  # -inf nodes occur
    got = S.multistep(diag_denoiser(joint, mean, var), joint, grid, x, **opts)
    assert bool(torch.isfinite(got).all())
    for k in range(4):
        alone = _Decaying(c[k])
        want = S.multistep(diag_denoiser(alone, mean[k:k + 1], var[k:k + 1]), alone, grid, x[:, k:k + 1], **opts)
        assert float((got[:, k:k + 1] - want).abs().max()) < 1e-12, k


def test_blur_is_solved_per_dct_frequency(reg):
    """``blur`` = the same solver on the DCT coefficients: B^T multistep_diag(B x) with the conjugated oracle."""
    blur = reg.create("corruption", "blur", sigma=0.5, data_range=None)
    shape = (6, 1, 4, 4)
    grid = torch.cat([torch.linspace(1, 0.05, 8, dtype=F64), torch.zeros(1, dtype=F64)])
    mean = torch.randn(1, 1, 4, 4, generator=gen(3), dtype=F64)
    var = 0.1 + torch.rand(1, 1, 4, 4, generator=gen(4), dtype=F64)

    class InBasis(udm.LinearGaussian):
        name = "in_basis"

        def amplitudes(self, t, shp):
            return blur.amplitudes(t, shp)

    coef = InBasis(prediction="x0")
    den_c = diag_denoiser(coef, mean, var)  # exact, per DCT coefficient

    def den_x(x, t, g=None):
        return blur.from_basis(den_c(blur.to_basis(x), t))

    x = torch.randn(shape, generator=gen(5), dtype=F64)
    for opts in (dict(order=2), dict(method="unipc", unic=True), dict(method="deis", order=3)):
        got = S.multistep(den_x, blur, grid, x, **opts)
        want = blur.from_basis(S.multistep(den_c, coef, grid, blur.to_basis(x), **opts))
        assert float((got - want).abs().max()) < 1e-10, opts


def test_minus_infinite_log_snr_at_t1_drops_the_node(cosine):
    """cosine has alpha(1) = 0: the prediction made at t = 1 says nothing about the trend, so the step after it
    is first order (= DDIM's) for every predictor, and nothing is NaN. UniPC's corrector of the first step takes
    its h -> inf limit: all weight on the new prediction, x_1 = (s_1/s_0) x_0 + a_1 x0_hat_1."""
    den = RING.denoiser(cosine)
    grid = torch.linspace(1, 0, 9, dtype=F64)
    x = torch.randn(100, 2, generator=gen(6), dtype=F64)
    ddim: list = []
    S.invert(den, cosine, grid, x, callback=ddim.append)
    for opts in (dict(order=2), dict(order=3), dict(method="unipc", order=3), dict(method="deis", order=3)):
        steps: list = []
        out = S.multistep(den, cosine, grid, x, callback=steps.append, **opts)
        assert bool(torch.isfinite(out).all())
        assert float((steps[1].x - ddim[1].x).abs().max()) < 1e-12, opts  # step 1: first order
        assert float((steps[2].x - ddim[2].x).abs().max()) > 1e-4, opts  # step 2: the multistep update
    steps = []
    out = S.multistep(den, cosine, grid, x, callback=steps.append, method="unipc", unic=True)
    assert bool(torch.isfinite(out).all())
    (a0, a1, a2), (s0, s1, s2) = (v.tolist() for v in cosine.noise_schedule.amplitudes(grid[:3]))
    m1 = den(ddim[0].x, grid[1:2].expand(100))  # predicted at the uncorrected x_1 (UniPC makes no extra call)
    x1 = s1 / s0 * x + (a1 - s1 * a0 / s0) * m1  # a0 = 0: x_1 = (s_1/s_0) x_0 + a_1 x0_hat_1
    x2 = s2 / s1 * x1 + (a2 - s2 * a1 / s1) * m1  # step 1 from the corrected state, first order
    assert a0 == 0.0 and float((steps[1].x - x2).abs().max()) < 1e-12


# -------------------------------------------------------------------------------- q_theta draws
class _Drawing:
    """A denoiser whose q_theta draw is mean + a fixed offset per call (the offsets are recorded)."""

    def __init__(self, den):
        self.den, self.offsets = den, []

    def predict(self, x, t, generator=None):
        mean = self.den(x, t)
        off = 0.01 * (len(self.offsets) + 1) * torch.ones_like(mean)
        self.offsets.append(off)
        return udm.Prediction(mean + off, mean, mean)


def test_a_q_theta_draw_enters_once_on_top_of_the_extrapolated_means(cosine):
    """x_{i+1} = invert(x_i, D(means) + (x0_hat_i - mean_i)): the draw's deviation is not extrapolated."""
    den = RING.denoiser(cosine)
    grid = lam_grid(cosine.noise_schedule, 6, -6, 3)
    x = x_start(cosine, grid)
    drawing = _Drawing(den)
    steps: list = []
    S.multistep(drawing, cosine, grid, x, order=2, callback=steps.append, lower_order_final=False)
    lam = cosine.noise_schedule.log_snr(grid) / 2
    xs, means = [x], []
    for i in range(6):
        means.append(den(xs[-1], grid[i:i + 1].expand(len(x))))
        if i == 0:
            d = means[0]
        else:
            u = float((lam[i + 1] - lam[i]) / (lam[i] - lam[i - 1]))
            d = (1 + u / 2) * means[i] - u / 2 * means[i - 1]
        xs.append(S.invert(lambda *a: d + drawing.offsets[i], cosine, grid[i:i + 2], xs[-1]))
        assert float((steps[i].x - xs[-1]).abs().max()) < 1e-12, i


# ----------------------------------------------------------------------------------- bad input
def test_options_are_checked(cosine):
    den = RING.denoiser(cosine)
    grid, x = torch.tensor([1.0, 0.5, 0.0], dtype=F64), torch.zeros(3, 2, dtype=F64)
    cases = [
        (dict(method="dpm"), r"sampler 'multistep': method must be one of dpm\+\+, unipc, deis; got 'dpm'\. "
                             r"Did you mean 'dpm\+\+'\?"),
        (dict(order=4), r"sampler 'multistep': order must be 1, 2 or 3; got 4\."),
        (dict(eta=1.5), r"sampler 'multistep': eta must be in \[0, 1\]; got 1\.5\. 0 is the ODE, 1 the SDE variant\."),
        (dict(method="unipc", eta=0.5), r"sampler 'multistep': eta must be 0 with method 'unipc'; got 0\.5\. Only "
                                        r"method 'dpm\+\+' has a stochastic \(SDE\) variant\."),
        (dict(method="deis", unic=True), r"sampler 'multistep': unic must be False with method 'deis' and "
                                              r"eta=0\.0; got True\. UniPC's corrector redoes deterministic steps"),
        (dict(variant="bh3"), r"sampler 'multistep': variant must be one of bh1, bh2; got 'bh3'\. Did you mean"),
    ]
    for opts, msg in cases:
        with pytest.raises(udm.ConfigError, match=msg):
            S.multistep(den, cosine, grid, x, **opts)


def test_a_corruption_without_the_linear_gaussian_layer_is_told_what_it_supports(reg):
    mask = reg.create("corruption", "mask", vocab_size=5)
    time = reg.create("time", "discrete", steps=10)
    for name in ("dpm++2m", "unipc", "deis", "adaptive"):
        with pytest.raises(udm.CapabilityError, match=rf"sampler '{re_escape(name)}': corruption 'mask' must offer "
                                                      rf"linear_gaussian; it lacks linear_gaussian\. Samplers 'mask' "
                                                      rf"supports: .*invert"):
            udm.sample(lambda x, t, g=None: x, mask, time, shape=(2, 4), sampler=name, steps=3, registry=reg)


def re_escape(s: str) -> str:
    import re
    return re.escape(s)


@pytest.mark.parametrize("steps,ends_at_zero", [(1, True), (2, True), (2, False), (3, True)])
def test_fewer_steps_than_the_order_degrade_with_a_note(cosine, steps, ends_at_zero):
    den = RING.denoiser(cosine)
    grid = torch.linspace(1, 0 if ends_at_zero else 0.3, steps + 1, dtype=F64)
    x = torch.randn(20, 2, generator=gen(7), dtype=F64)
    for opts in (dict(order=3), dict(method="unipc", order=3, unic=True), dict(method="deis", order=3)):
        with pytest.warns(UserWarning, match=rf"sampler 'multistep': order 3 needs more steps; {steps} step\(s\) "
                                             rf"reach order \d at most \(warm-up from order 1, lower-order final "
                                             rf"steps\)\. Use more steps or a lower order\."):
            out = S.multistep(den, cosine, grid, x, **opts)
        assert out.shape == x.shape and bool(torch.isfinite(out).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough steps: no note
        S.multistep(den, cosine, torch.linspace(1, 0, 6, dtype=F64), x, order=3)


# ------------------------------------------------------------------------------- experiments
def test_an_experiment_samples_with_a_solver_and_records_the_grid_start(tmp_path, reg):
    """YAML names the preset and its options; a logsnr grid on cosine starts below t = 1 from noise_prior, and
    eval.jsonl says so."""
    import json

    exp = tmp_path / "solver.yaml"
    exp.write_text("""\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 16, depth: 1, time_dim: 8}
data: {name: two_moons, n: 128}
train: {steps: 4, batch_size: 32, lr: 1e-2}
sample: {sampler: unipc, steps: 6, n: 32, spacing: logsnr, order: 3}
eval: {sliced_wasserstein: {projections: 8}}
""")
    udm.run_experiment(exp, out=tmp_path / "run", progress=False, registry=reg)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    grid = reg.create("time", "discrete", steps=100).grid(6, spacing="logsnr",
                                                         corruption=reg.create("corruption", "gaussian",
                                                                               schedule="cosine"))
    assert record["sampler"] == "unipc" and record["grid"]["spacing"] == "logsnr"
    assert record["grid"]["first_time"] == float(grid[0]) < 1
    assert record["grid"]["prior"].startswith("noise_prior: x_t0 = s(t0) eps with s(t0) = ")
    assert math.isfinite(record["eval"]["sliced_wasserstein"])
