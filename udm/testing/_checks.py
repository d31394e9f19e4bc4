"""The conformance checks that do not run a sampler: contract basics, the noise posterior (does it explain
x_t; is it distributed as q), the refresh kernel (q-invariant; identity at 0; full refresh at 1), the
declared schedule against ``forward``, and the prior against F_1(x_0, eps).

Every check returns a :class:`CheckResult` whose detail names the statistic, its value and the threshold.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ._context import ATOL, RTOL, CheckResult, KitContext, float_gap, rows_equal, time_tensor
from ._features import Features, noise_features, pair_features
from ._stats import worst_ks

__all__ = ["shapes", "determinism", "t0_identity", "explains", "posterior_law", "refresh_kernel",
           "schedule_matches_forward", "prior", "posterior_is_point_mass"]


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else (len(x),)


def shapes(ctx: KitContext) -> CheckResult:
    c, x0 = ctx.corruption, ctx.x0
    xt = c.forward(x0, c.sample_noise(x0, ctx.generator("shapes")), time_tensor(0.5, x0))
    if isinstance(x0, torch.Tensor) and (xt.shape != x0.shape or xt.dtype != x0.dtype):
        return CheckResult("shapes", False, f"forward must keep shape and dtype; got {tuple(x0.shape)}/{x0.dtype} -> "
                                            f"{tuple(xt.shape)}/{xt.dtype}")
    return CheckResult("shapes", True, f"forward keeps shape {_shape_of(x0)} and dtype")


def determinism(ctx: KitContext) -> CheckResult:
    c, x0 = ctx.corruption, ctx.x0
    e1, e2 = c.sample_noise(x0, ctx.generator("determinism")), c.sample_noise(x0, ctx.generator("determinism"))
    t = time_tensor(0.5, x0)
    if not bool(rows_equal(e1, e2).all()):
        return CheckResult("determinism", False, "sample_noise must be a function of the generator; got different "
                                                 "draws from two generators with the same seed")
    if not bool(rows_equal(c.forward(x0, e1, t), c.forward(x0, e2, t)).all()):
        return CheckResult("determinism", False, "forward must be deterministic given (x_0, eps, t); it is not")
    kw = {"device": x0.device}
    p1 = c.sample_prior(_shape_of(x0), ctx.generator("determinism/prior"), **kw)
    p2 = c.sample_prior(_shape_of(x0), ctx.generator("determinism/prior"), **kw)
    if not bool(rows_equal(p1, p2).all()):
        return CheckResult("determinism", False, "sample_prior must be a function of the generator; got different "
                                                 "draws from two generators with the same seed")
    return CheckResult("determinism", True, "sample_noise, forward and sample_prior repeat under equal seeds")


def t0_identity(ctx: KitContext) -> CheckResult:
    c, x0 = ctx.corruption, ctx.x0
    x = c.forward(x0, c.sample_noise(x0, ctx.generator("identity")), time_tensor(0.0, x0))
    ok = rows_equal(x, x0)
    gap = float_gap(x, x0)
    stat = f"max |F_0(x_0, eps) - x_0| = {gap:.3g} (tolerance {ATOL:g} + {RTOL:g} |x_0|)" if gap is not None else \
        f"{int((~ok).sum())} of {len(ok)} rows differ"
    return CheckResult("t0_identity", bool(ok.all()),
                       ("forward at t = 0 is the identity: " if ok.all() else "forward at t = 0 is not the identity: ")
                       + stat)


def _posterior_draws(ctx: KitContext, i: int, t: float):
    """(eps, x_t, eps_hat): x_t = F_t(x_0, eps) and eps_hat ~ p(eps | x_t, x_0) from *another* generator."""
    c, xn = ctx.corruption, ctx.xn
    eps = c.sample_noise(xn, ctx.generator("explain/noise", i))
    tt = time_tensor(t, xn)
    x_t = c.forward(xn, eps, tt)
    eps_hat = c.noise_posterior(x_t, xn, tt, ctx.generator("explain/posterior", i))
    return eps, x_t, eps_hat


def explains(ctx: KitContext) -> CheckResult:
    """F_t(x_0, eps_hat) = x_t for every one of the n samples, at every probe time; the posterior draws from
    a generator independent of the one that made x_t (so returning fresh noise cannot pass)."""
    c, xn = ctx.corruption, ctx.xn
    worst = (-1, -1.0, None)  # (rows off, max gap, t): the probe time with the most rows off
    for i, t in enumerate(ctx.probes):
        _, x_t, eps_hat = _posterior_draws(ctx, i, t)
        again = c.forward(xn, eps_hat, time_tensor(t, xn))
        off = int((~rows_equal(again, x_t)).sum())
        gap = float_gap(again, x_t)
        worst = max(worst, (off, gap if gap is not None else 0.0, t), key=lambda w: w[:2])
    bad_rows, gap, worst_t = worst
    times = ", ".join(f"{t:.3g}" for t in ctx.probes)
    what = (f"max |F_t(x_0, eps_hat) - x_t| = {gap:.3g} (tolerance {ATOL:g} + {RTOL:g} |x_t|)"
            if isinstance(xn, torch.Tensor) and xn.dtype.is_floating_point else "rows with F_t(x_0, eps_hat) != x_t")
    detail = (f"{what}; {bad_rows} of {ctx.n} rows off at t = {worst_t:.3g} (times {times}; eps_hat drawn with an "
              f"independent generator)")
    return CheckResult("noise_posterior_explains_x_t", bad_rows == 0, detail)


def posterior_is_point_mass(ctx: KitContext) -> bool:
    """Whether the noise posterior is deterministic (an exact inverse): two independent draws agree."""
    c, xn = ctx.corruption, ctx.xn
    t = ctx.probes[len(ctx.probes) // 2]
    _, x_t, a = _posterior_draws(ctx, 0, t)
    b = c.noise_posterior(x_t, xn, time_tensor(t, xn), ctx.generator("explain/posterior/again"))
    return bool(rows_equal(a, b).all())


def posterior_law(ctx: KitContext, alpha: float) -> CheckResult:
    """eps_hat ~ p(eps | x_t, x_0) with x_t ~ p(x_t | x_0) must be distributed as q(eps) itself: a two-sample
    KS test per noise feature against fresh draws, at every probe time (alpha split over times and features)."""
    c, xn = ctx.corruption, ctx.xn
    worst, worst_t = None, None
    for i, t in enumerate(ctx.probes):
        _, _, eps_hat = _posterior_draws(ctx, i, t)
        fresh = c.sample_noise(xn, ctx.generator("law/fresh", i))
        fa = noise_features(eps_hat, ctx.generator("law/features", i, torch.device("cpu")))
        fb = noise_features(fresh, ctx.generator("law/features", i, torch.device("cpu")))
        if fa is None or fb is None:
            return CheckResult("noise_posterior_law", True, "skipped: the noise is neither a tensor nor a dataclass "
                                                            "of tensors")
        w = worst_ks(fa, fb, alpha / len(ctx.probes))
        if worst is None or w.result.statistic - w.result.critical > worst.result.statistic - worst.result.critical:
            worst, worst_t = w, t
    return CheckResult("noise_posterior_law", worst.passed,
                       f"eps_hat vs fresh eps ~ q at t = {worst_t:.3g} (worst of {len(ctx.probes)} times): "
                       + worst.describe())


def _flat_noise(eps: Any) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        return eps.reshape(eps.shape[0], -1).double()
    return torch.cat([_flat_noise(getattr(eps, f.name)) for f in dataclasses.fields(eps)
                      if isinstance(getattr(eps, f.name), torch.Tensor)], 1)


def refresh_kernel(ctx: KitContext, alpha: float) -> CheckResult:
    """refresh_noise(eps, a): a = 0 returns eps; a = 0.5 keeps q (KS per noise feature against fresh draws);
    a = 1 is a full refresh ((eps, eps') pairs indistinguishable from independent pairs)."""
    c, xn = ctx.corruption, ctx.xn
    eps = c.sample_noise(xn, ctx.generator("refresh/noise"))
    same = c.refresh_noise(eps, 0.0, ctx.generator("refresh/kernel"))
    if not bool(rows_equal(same, eps).all()):
        return CheckResult("refresh_noise_preserves_q", False,
                           f"refresh_noise(eps, 0) must return eps; {int((~rows_equal(same, eps)).sum())} of {ctx.n} "
                           f"rows changed")
    cpu = torch.device("cpu")
    half = c.refresh_noise(eps, 0.5, ctx.generator("refresh/kernel", 1))
    full = c.refresh_noise(eps, 1.0, ctx.generator("refresh/kernel", 2))
    laws = []
    for k, (a, moved) in enumerate(((0.5, half), (1.0, full))):
        fresh = c.sample_noise(xn, ctx.generator("refresh/fresh", k))
        fa = noise_features(moved, ctx.generator("refresh/f", k, cpu))
        fb = noise_features(fresh, ctx.generator("refresh/f", k, cpu))
        if fa is None:
            return CheckResult("refresh_noise_preserves_q", True, "skipped: the noise is neither a tensor nor a "
                                                                  "dataclass of tensors")
        law = worst_ks(fa, fb, alpha / 3)
        if not law.passed:
            return CheckResult("refresh_noise_preserves_q", False,
                               f"refresh_noise(eps, {a:g}) with eps ~ q must be distributed as q: " + law.describe())
        laws.append(law)
    other = c.sample_noise(xn, ctx.generator("refresh/fresh", 2))
    e = _flat_noise(eps)
    pa = pair_features(e, _flat_noise(full), e, ctx.generator("refresh/p", 0, cpu))
    pb = pair_features(e, _flat_noise(other), e, ctx.generator("refresh/p", 0, cpu))
    pair = worst_ks(_rename(pa), _rename(pb), alpha / 3)
    if not pair.passed:
        return CheckResult("refresh_noise_preserves_q", False, "refresh_noise(eps, 1) must draw afresh: (eps, eps') "
                                                               "vs independent pairs: " + pair.describe())
    return CheckResult("refresh_noise_preserves_q", True,
                       f"a = 0 is the identity; a = 0.5 keeps q: {laws[0].describe()}; a = 1 keeps q: "
                       f"{laws[1].describe()} and is independent of eps: {pair.describe()}")


def _rename(f: Features) -> Features:
    return Features(f.values, [n.replace("x_t", "eps").replace("x_s", "eps'") for n in f.names])


def schedule_matches_forward(ctx: KitContext) -> CheckResult:
    """forward(x_0, eps, t) = alpha_t x_0 + sigma_t eps with the declared ``schedule(t)``, and its declared
    derivatives agree with central differences of alpha and sigma (float64, h = 1e-5)."""
    c, xn = ctx.corruption, ctx.xn
    name = "schedule_matches_forward"
    gap, where, ok, dgap = 0.0, ctx.probes[0], True, 0.0
    for i, t in enumerate(ctx.probes):
        tt = time_tensor(t, xn)
        sch = c.schedule(tt)
        if sch.alpha.numel() not in (1, ctx.n):
            return CheckResult(name, True, "skipped: the schedule is not one (alpha, sigma) per sample")
        eps = c.sample_noise(xn, ctx.generator("schedule/noise", i))
        got = c.forward(xn, eps, tt).double()
        shape = (-1,) + (1,) * (xn.ndim - 1)
        want = sch.alpha.double().reshape(shape) * xn.double() + sch.sigma.double().reshape(shape) * eps.double()
        err = (got - want).abs()
        ok = ok and bool((err <= ATOL + RTOL * want.abs()).all())
        if float(err.max()) >= gap:
            gap, where = float(err.max()), t
        if getattr(sch, "dalpha", None) is None or getattr(sch, "dsigma", None) is None:
            continue
        h = 1e-5
        lo, hi = max(t - h, 0.0), min(t + h, 1.0)
        s_lo, s_hi = c.schedule(time_tensor(lo, xn)), c.schedule(time_tensor(hi, xn))
        for what, d, a, b in (("alpha", sch.dalpha, s_lo.alpha, s_hi.alpha),
                              ("sigma", sch.dsigma, s_lo.sigma, s_hi.sigma)):
            fd = (b.double() - a.double()) / (hi - lo)
            derr = (d.double() - fd).abs()
            dgap = max(dgap, float(derr.max()))
            if not bool((derr <= 1e-4 * (1 + fd.abs())).all()):
                return CheckResult(name, False, f"d{what}/dt from schedule must match the central difference of "
                                                f"{what}: max |d{what}/dt - difference| = {float(derr.max()):.3g} at "
                                                f"t = {t:.3g} (tolerance 1e-4 (1 + |difference|))")
    return CheckResult(name, ok, f"max |forward(x_0, eps, t) - (alpha_t x_0 + sigma_t eps)| = {gap:.3g} at "
                                 f"t = {where:.3g} (tolerance {ATOL:g} + {RTOL:g} |alpha_t x_0 + sigma_t eps|); "
                                 f"max |derivative - central difference| = {dgap:.2g}")


def prior(ctx: KitContext, alpha: float) -> CheckResult:
    """sample_prior(n) against F_1(x_0, eps) with x_0 drawn from ``prior_data`` (a corruption with ``fit`` is
    checked on a copy fitted to those draws), per feature by two-sample KS."""
    data = ctx.prior_data
    idx = torch.randint(len(data), (ctx.n,), generator=ctx.generator("prior/rows", device=torch.device("cpu")))
    rows = data[idx.to(data.device)] if isinstance(data, torch.Tensor) else data[idx]
    c = ctx.corruption
    fitted = ""
    if callable(getattr(c, "fit", None)):
        c = copy.deepcopy(c)
        c.fit(rows)
        fitted = " (a copy of the corruption fitted to those draws)"
    one = time_tensor(1.0, rows)
    x1 = c.forward(rows, c.sample_noise(rows, ctx.generator("prior/noise")), one)
    kw: dict[str, Any] = {"device": rows.device}
    if isinstance(rows, torch.Tensor) and rows.dtype.is_floating_point:
        kw["dtype"] = rows.dtype
    shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else (len(rows),)
    drawn = c.sample_prior(shape, ctx.generator("prior/draw"), **kw)
    w = worst_ks(ctx.feats(drawn, rows, "prior"), ctx.feats(x1, rows, "prior"), alpha)
    return CheckResult("prior", w.passed, f"sample_prior vs F_1(x_0, eps), x_0 ~ prior_data{fitted}: " + w.describe())
