"""Sampler checks with the oracle x0_hat = x_0: the **marginal** check (x_s ~ p(x_s | x_0) after every
chain) and the **joint** check (the pairs (x_t, x_s) of a single step against the pairs the rule must
produce), which sees a step that ignores x_t even though its marginal is right.

Joint references, exact for any corruption whose noise posterior is exact (x_s = F_s(x_0, eps')
with (x_0, x_t, eps_hat) distributed as (x_0, x_t, eps)):

=========================  ===================================================================
rule                       (x_t, x_s) must be distributed as
=========================  ===================================================================
renoise                    (F_t(x_0, eps), F_s(x_0, eps')), eps, eps' independent
invert, residual, ode      (F_t(x_0, eps), F_s(x_0, eps)), the same eps (and equal to it row by
                           row when the noise posterior is a point mass; ode: up to its solver)
refresh(amount a)          (F_t(x_0, eps), F_s(x_0, refresh_noise(eps, a)))
refresh(eta), posterior    linear-Gaussian corruptions (per basis coefficient) or an affine scalar
                           ``schedule``: x_s | x_t Gaussian with the closed-form mean and variance
                           (DDIM-eta; Ho et al. eq. 7 for any s < t)
posterior, otherwise       a dependence statistic: the pairs must not look independent
=========================  ===================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ._context import ATOL, RTOL, CheckResult, KitContext, float_gap, rows_equal, time_tensor
from ._oracle import FixedDenoiser
from ._stats import ks_normal, worst_ks, z_critical

__all__ = ["SamplerPlan", "rule_kind", "sampler_checks", "joint_applies", "refine"]

RULE_NAMES = ("renoise", "invert", "refresh", "residual", "ode", "posterior")
#: joint references by rule; residual and ode land where invert does when x_t = F_t(x_0, eps_hat)
_REFERENCE = {"renoise": "(F_t(x_0, eps), F_s(x_0, eps')) with independent eps, eps'",
              "invert": "(F_t(x_0, eps), F_s(x_0, eps)) with the same eps",
              "residual": "(F_t(x_0, eps), F_s(x_0, eps)) with the same eps",
              "ode": "(F_t(x_0, eps), F_s(x_0, eps)) with the same eps",
              "refresh": "(F_t(x_0, eps), F_s(x_0, refresh_noise(eps, a)))"}


def rule_kind(spec: Any) -> str | None:
    """Which of the six core rules ``spec`` runs (by function identity), or ``None`` for another rule."""
    from .. import samplers

    fn = getattr(spec, "rule", spec)
    for name in RULE_NAMES:
        if fn is getattr(samplers, name, None):
            return name
    return None


@dataclass
class SamplerPlan:
    name: str
    spec: Any
    options: dict[str, Any]  #: the spec's own options merged with the caller's
    call_options: dict[str, Any]  #: what the kit passes at call time
    kind: str | None
    exact: bool  #: exact_marginals: one step maps p(x_t|x_0) to p(x_s|x_0) exactly


def _linear_gaussian(c: Any, like: Any) -> bool:
    from ..corruption import capabilities

    return isinstance(like, torch.Tensor) and "linear_gaussian" in capabilities(c)


def _scalar_schedule(c: Any, like: Any) -> bool:
    """Whether the closed form of a step is known: a linear-Gaussian corruption, or a scalar ``schedule``."""
    if _linear_gaussian(c, like):
        return True
    if not callable(getattr(c, "schedule", None)) or not isinstance(like, torch.Tensor):
        return False
    try:
        return c.schedule(time_tensor(0.5, like)).alpha.numel() in (1, len(like))
    except Exception:  # noqa: BLE001 - a schedule that fails is reported by schedule_matches_forward
        return False


def joint_applies(plan: SamplerPlan, corruption: Any, like: Any) -> bool:
    """Whether the joint check can judge this sampler on single-step chains."""
    if plan.kind in ("renoise", "invert", "residual", "ode"):
        return True
    if plan.kind == "refresh":
        return "amount" in plan.options or _scalar_schedule(corruption, like)
    return plan.kind == "posterior"


def refine(chain: list[float], fine_steps: int) -> list[float]:
    """A grid through every time of ``chain`` with about ``fine_steps`` steps in all (ODE solvers)."""
    out = [chain[0]]
    span = chain[0] - chain[-1]
    for t, s in zip(chain, chain[1:]):
        k = max(1, round(fine_steps * (t - s) / span))
        out += torch.linspace(t, s, k + 1, dtype=torch.float64)[1:].tolist()
    return out


def _times_text(chain: list[float]) -> str:
    return "times [" + ", ".join(f"{v:.3g}" for v in chain) + "]"


def sampler_checks(ctx: KitContext, plan: SamplerPlan, chains: list[list[float]], alpha: float, fine_steps: int,
                   point_mass: bool, marginal: bool = True, joint: bool = True) -> list[CheckResult]:
    """marginal[name] for every chain and joint[name] for every single-step chain (when it applies)."""
    out = []
    joint = joint and joint_applies(plan, ctx.corruption, ctx.xn)
    for i, chain in enumerate(chains):
        label = _times_text(chain)
        single = joint and len(chain) == 2
        if not (marginal or single):
            continue
        try:
            x_t, eps, x_s = _run(ctx, plan, chain, i, fine_steps)
            ref = _reference_run(ctx, plan, chain, i) if single else None
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported with its message
            msg = f"{label}: raised {type(exc).__name__}: {exc}"
            out += [CheckResult(f"{kind}[{plan.name}]", False, msg)
                    for kind, on in (("marginal", marginal), ("joint", single)) if on]
            continue
        if marginal:
            ref_s = _marginal_ref(ctx, chain, i)
            w = worst_ks(ctx.feats(x_s, ctx.xn, f"m{i}"), ctx.feats(ref_s, ctx.xn, f"m{i}"), alpha)
            out.append(CheckResult(f"marginal[{plan.name}]", w.passed,
                                   f"{label}: x_s vs F_s(x_0, eps): " + w.describe()))
        if single:
            out.append(_joint(ctx, plan, chain, i, alpha, point_mass, (x_t, eps, x_s), ref))
    return out


def _run(ctx: KitContext, plan: SamplerPlan, chain: list[float], i: int, fine_steps: int):
    c, xn = ctx.corruption, ctx.xn
    eps = c.sample_noise(xn, ctx.generator("chain/x_t", i))
    x_t = c.forward(xn, eps, time_tensor(chain[0], xn))
    grid = chain if plan.exact else refine(chain, fine_steps)
    x_s = plan.spec(FixedDenoiser(xn), c, torch.tensor(grid, dtype=torch.float64), x_t,
                    generator=ctx.generator("chain/sampler", i), **plan.call_options)
    return x_t, eps, x_s


def _marginal_ref(ctx: KitContext, chain: list[float], i: int):
    c, xn = ctx.corruption, ctx.xn
    return c.forward(xn, c.sample_noise(xn, ctx.generator("chain/marginal", i)), time_tensor(chain[-1], xn))


def _reference_run(ctx: KitContext, plan: SamplerPlan, chain: list[float], i: int):
    """Pairs (x_t', x_s') the rule must reproduce in law (single steps; ``None`` where no such reference)."""
    c, xn = ctx.corruption, ctx.xn
    g = ctx.generator("chain/reference", i)
    eps = c.sample_noise(xn, g)
    t, s = time_tensor(chain[0], xn), time_tensor(chain[-1], xn)
    x_t = c.forward(xn, eps, t)
    if plan.kind == "renoise":
        return x_t, eps, c.forward(xn, c.sample_noise(xn, g), s)
    if plan.kind in ("invert", "residual", "ode"):
        return x_t, eps, c.forward(xn, eps, s)
    if plan.kind == "refresh" and "amount" in plan.options:
        a = plan.options["amount"]
        a = a(t, s) if callable(a) else a
        return x_t, eps, c.forward(xn, c.refresh_noise(eps, a, g), s)
    return x_t, eps, c.forward(xn, c.sample_noise(xn, g), s)  # independent pairs (the dependence statistic)


def _joint(ctx: KitContext, plan: SamplerPlan, chain: list[float], i: int, alpha: float, point_mass: bool,
           run: tuple, ref: tuple) -> CheckResult:
    name, label = f"joint[{plan.name}]", _times_text(chain)
    c, xn = ctx.corruption, ctx.xn
    x_t, eps, x_s = run
    exact = ""
    if plan.kind in ("invert", "residual") and point_mass:
        want = c.forward(xn, eps, time_tensor(chain[-1], xn))
        ok = rows_equal(x_s, want)
        exact = "x_s = F_s(x_0, eps) row by row (the noise posterior is a point mass); "
        if not bool(ok.all()):
            gap = float_gap(x_s, want)
            gap_text = ("" if gap is None else
                        f"max |x_s - F_s(x_0, eps)| = {gap:.3g} (tolerance {ATOL:g} + {RTOL:g} |.|); ")
            return CheckResult(name, False, f"{label}: the noise posterior is a point mass, so x_s must be "
                                            f"F_s(x_0, eps) of the very eps that made x_t: {gap_text}"
                                            f"{int((~ok).sum())} of {ctx.n} rows differ")
    if plan.kind in ("posterior", "refresh") and _scalar_schedule(c, xn) and not (
            plan.kind == "refresh" and "amount" in plan.options):
        return _closed_form(ctx, plan, chain, x_t, x_s, alpha)
    pa = ctx.pair_feats(x_t, x_s, xn, f"j{i}")
    pb = ctx.pair_feats(ref[0], ref[2], xn, f"j{i}")
    w = worst_ks(pa, pb, alpha)
    if plan.kind == "posterior":  # no closed form known: only "x_s depends on x_t" can be asked for
        rejected = not w.passed
        return CheckResult(name, rejected,
                           f"{label}: dependence on x_t: (x_t, x_s) pairs vs independent pairs (F_t(x_0, eps), "
                           f"F_s(x_0, eps')) must differ: " + w.describe() + ("" if rejected else
                           " -- indistinguishable, the posterior ignores x_t"))
    return CheckResult(name, w.passed, f"{label}: {exact}(x_t, x_s) vs {_REFERENCE[plan.kind]}: " + w.describe())


def _closed_form(ctx: KitContext, plan: SamplerPlan, chain: list[float], x_t, x_s, alpha: float) -> CheckResult:
    """x_s | x_t, x_0 ~ N(mean, var) with the closed form of the rule (DDPM posterior, Ho et al. eq. 7 for any
    s < t; DDIM-eta, Song et al. eq. 12/16): the standardised residual must be N(0, 1) (one-sample KS over all
    coordinates) and uncorrelated with the noise of x_t (z-test)."""
    c, xn = ctx.corruption, ctx.xn
    name, label = f"joint[{plan.name}]", _times_text(chain)
    if _linear_gaussian(c, xn):  # per basis coefficient: (B x_t)_k = a_k (B x_0)_k + s_k eps_k
        flat = (1, -1)
        mt, ms = (c.marginal(time_tensor(v, xn)[:1], xn) for v in (chain[0], chain[-1]))
        a_t, s_t, a_s, s_s = (v.expand(1, *xn.shape[1:]).reshape(flat).double()
                              for v in (mt.a64, mt.s64, ms.a64, ms.s64))
        x0, xt, xs = (c.to_basis(v.double()).reshape(len(xn), -1) for v in (xn, x_t, x_s))
    else:
        st, ss = c.schedule(time_tensor(chain[0], xn)), c.schedule(time_tensor(chain[-1], xn))
        a_t, s_t, a_s, s_s = (v.double().reshape(-1, 1) for v in (st.alpha, st.sigma, ss.alpha, ss.sigma))
        x0, xt, xs = (v.reshape(len(xn), -1).double() for v in (xn, x_t, x_s))
    e_t = (xt - a_t * x0) / s_t
    if plan.kind == "posterior":
        # a coefficient with no signal left at s (a_s = 0, e.g. a pixelation level already averaged away) has
        # a_{t|s} = 0 by convention: x_s is then independent of x_t there
        a_ts = torch.where(a_s > 0, a_t / torch.where(a_s > 0, a_s, torch.ones_like(a_s)), torch.zeros_like(a_t))
        v = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
        mean, var = a_ts * s_s**2 / s_t**2 * xt + a_s * v / s_t**2 * x0, v * s_s**2 / s_t**2
        what = "the posterior p(x_s | x_t, x_0)"
    else:
        eta = float(plan.options.get("eta", 0.0))
        num, den = (a_t * s_s) ** 2, (a_s * s_t) ** 2
        snr_ratio = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
        r = eta * (1 - snr_ratio).clamp(0, 1).sqrt()  # no signal at either time: nothing to refresh (r = 0)
        mean, var = a_s * x0 + s_s * (1 - r**2).sqrt() * e_t, (s_s * r) ** 2
        what = f"DDIM-eta (eta = {eta:g})"
    sd = var.sqrt().expand_as(xs)
    # coordinates where the step is deterministic (e.g. a coefficient with no signal at either time, which
    # DDIM-eta leaves as it is) must land exactly on the mean; the others are tested in distribution
    fixed = (sd <= 1e-12).all(0)
    exact = ((xs - mean).abs() <= ATOL + RTOL * mean.abs())[:, fixed]
    if not bool(exact.all()):
        gap = float((xs - mean)[:, fixed].abs().max())
        return CheckResult(name, False, f"{label}: {what} is deterministic at {int(fixed.sum())} coordinate(s): "
                                        f"max |x_s - mean| there = {gap:.3g}")
    if bool(fixed.all()):
        gap = float((xs - mean).abs().max())
        return CheckResult(name, True, f"{label}: {what} is deterministic here: max |x_s - mean| = {gap:.3g}")
    xs, mean, sd, e_t = xs[:, ~fixed], mean.expand_as(xs)[:, ~fixed], sd[:, ~fixed], e_t.expand_as(xs)[:, ~fixed]
    z = (xs - mean) / sd
    ks = ks_normal(z, alpha / 3)
    means = z.mean(0) * math.sqrt(len(z))  # each ~ N(0, 1): catches a mean that is off for some coordinates
    j = int(means.abs().argmax())
    mean_crit = z_critical(alpha / 3 / z.shape[1])
    corr = float((z * e_t).sum() / math.sqrt(z.numel()))
    crit = z_critical(alpha / 3)
    ok = ks.passed and abs(corr) <= crit and float(means[j].abs()) <= mean_crit
    return CheckResult(name, ok, f"{label}: closed form of {what}: KS D={ks.statistic:.4f} of the standardised "
                                 f"residual z = (x_s - E[x_s | x_t, x_0]) / sd vs N(0, 1), critical {ks.critical:.4f}; "
                                 f"mean of z at coordinate {j} times sqrt(n) = {float(means[j]):.2f}, critical "
                                 f"{mean_crit:.2f} (worst of {z.shape[1]}); correlation of z with the noise of x_t, "
                                 f"z-score {corr:.2f}, critical {crit:.2f}")
