"""The conformance kit a corruption plugin runs in its own tests (docs/conformance.md explains every check).

:func:`check_corruption` plans the checks that apply to the corruption, splits the false-alarm budget
``alpha`` over the statistical ones, runs them and returns a :class:`ConformanceReport` that says which
checks and which samplers ran. The samplers are **pinned**: by default the six core rules (renoise,
invert, refresh, residual, ode, posterior) that the corruption supports, whatever other plugins are
installed; ``samplers="all"`` or a list of names widens or narrows the set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._registry import Registry, registry as default_registry
from ..errors import did_you_mean
from . import _checks as C
from ._context import CheckResult, KitContext, time_tensor
from ._features import default_features, delta_features, pair_features
from ._oracle import FixedDenoiser
from ._sampler_checks import RULE_NAMES, SamplerPlan, joint_applies, rule_kind, sampler_checks
from ._stats import worst_ks
from ._times import default_chains, probe_times

__all__ = ["CheckResult", "ConformanceReport", "marginal_check", "check_corruption", "assert_conforms",
           "plan_check_names", "PINNED_SAMPLERS", "DEFAULT_SAMPLER_OPTIONS"]

#: the samplers checked by default (those the corruption supports): the six core rules
PINNED_SAMPLERS = RULE_NAMES
#: options the bare rules need to run at all (presets carry their own)
DEFAULT_SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {"refresh": {"amount": 0.5}}
#: checks that are statistical tests and share the false-alarm budget (the others are exact)
_STATISTICAL = ("noise_posterior_law", "refresh_noise_preserves_q", "prior")
#: every single check's name (sampler checks are "marginal[<sampler>]" and "joint[<sampler>]")
CHECKS = ("shapes", "determinism", "t0_identity", "noise_posterior_explains_x_t", "noise_posterior_law",
          "refresh_noise_preserves_q", "schedule_matches_forward", "prior")


@dataclass
class ConformanceReport:
    corruption: str
    results: list[CheckResult] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)  #: the samplers that were checked
    unsupported: dict[str, str] = field(default_factory=dict)  #: sampler -> the capabilities it lacks
    skipped: dict[str, str] = field(default_factory=dict)  #: check -> why it did not run
    alpha: float = 0.0  #: the whole report falsely fails with probability at most this

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        lines = [f"conformance of {self.corruption!r}: {'PASSED' if self.passed else 'FAILED'} "
                 f"(false-alarm rate of the whole report <= {self.alpha:g})",
                 f"  samplers checked: {', '.join(self.samplers) or 'none'}"]
        lines += [f"  sampler {s} not checked: the corruption lacks {why}" for s, why in self.unsupported.items()]
        lines += [f"  check {k} skipped: {why}" for k, why in self.skipped.items()]
        lines += [f"  {r}" for r in self.results]
        return "\n".join(lines)


# ------------------------------------------------------------------ planning
@dataclass
class _Plan:
    basics: list[str]
    samplers: list[SamplerPlan]
    unsupported: dict[str, str]
    skipped: dict[str, str]
    chains: list[list[float]]


def _choose_samplers(corruption: Any, reg: Registry, samplers: Iterable[str] | str | None,
                     sampler_options: Mapping[str, Mapping]) -> tuple[list[SamplerPlan], dict[str, str]]:
    if samplers is None:
        names, explicit = list(PINNED_SAMPLERS), False
    elif samplers == "all":
        names, explicit = reg.names("sampler"), False
    else:
        names, explicit = list(samplers), True
    opts = {**DEFAULT_SAMPLER_OPTIONS, **{k: dict(v) for k, v in sampler_options.items()}}
    plans, unsupported = [], {}
    for name in names:
        spec = reg.get("sampler", name)
        missing = spec.missing(corruption)
        if missing and not explicit:
            unsupported[name] = ", ".join(missing)
            continue
        call = dict(opts.get(name, {}))
        plans.append(SamplerPlan(name, spec, {**dict(spec.options), **call}, call, rule_kind(spec),
                                 getattr(spec, "exact_marginals", True)))
    return plans, unsupported


def _plan(corruption: Any, x0: Any, *, time_type: Any, reg: Registry, samplers: Any, sampler_options: Mapping,
          seed: int, skip: Mapping[str, str], chains: list[list[float]] | None) -> _Plan:
    basics = ["shapes", "determinism", "t0_identity"]
    if callable(getattr(corruption, "noise_posterior", None)):
        basics += ["noise_posterior_explains_x_t", "noise_posterior_law"]
    if callable(getattr(corruption, "refresh_noise", None)):
        basics.append("refresh_noise_preserves_q")
    if callable(getattr(corruption, "schedule", None)):
        basics.append("schedule_matches_forward")
    basics.append("prior")
    plans, unsupported = _choose_samplers(corruption, reg, samplers, sampler_options)
    rng = torch.Generator().manual_seed(seed * 7919 + 17)
    chain_list = _check_chains(chains) if chains is not None else default_chains(time_type, rng)
    skipped = {}
    for name in [*basics, *(f"{k}[{p.name}]" for p in plans for k in ("marginal", "joint"))]:
        reason = _skip_reason(name, skip)
        if reason is not None:
            skipped[name] = reason
    return _Plan([b for b in basics if b not in skipped], plans, unsupported, skipped, chain_list)


def _skip_reason(name: str, skip: Mapping[str, str]) -> str | None:
    for key, why in skip.items():
        if name == key or name.startswith(key + "["):
            return why
    return None


def _as_skip(skip: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    out = ({str(k): str(v) for k, v in skip.items()} if isinstance(skip, Mapping)
           else {str(k): "skipped by the caller" for k in skip})
    for key in out:
        if key not in CHECKS and key not in ("marginal", "joint") and not re.fullmatch(r"(marginal|joint)\[.+\]", key):
            raise ValueError(f"check_corruption: skip must name checks ({', '.join(CHECKS)}, marginal, joint, "
                             f"marginal[<sampler>], joint[<sampler>]); got {key!r}.{did_you_mean(key, CHECKS)}")
    return out


def _check_chains(chains: list[list[float]] | None) -> list[list[float]] | None:
    if chains is None:
        return None
    out = [[float(v) for v in ch] for ch in chains]
    for ch in out:
        if len(ch) < 2 or any(b >= a for a, b in zip(ch, ch[1:])) or ch[-1] <= 0 or ch[0] > 1:
            raise ValueError(f"check_corruption: chains must be strictly decreasing lists of at least two times in "
                             f"(0, 1]; got {ch}. End every chain above 0 (the last step to 0 returns x0_hat itself).")
    return out


def plan_check_names(corruption: Any, x0: Any = None, *, registry: Registry | None = None, samplers: Any = None,
                     sampler_options: Mapping | None = None, skip: Iterable[str] | Mapping[str, str] = (),
                     chains: list[list[float]] | None = None, **_: Any) -> list[str]:
    """The names of the checks :func:`check_corruption` would run (each at least once), in report order."""
    reg = registry or default_registry()
    plan = _plan(corruption, x0, time_type=None, reg=reg, samplers=samplers, sampler_options=sampler_options or {},
                 seed=0, skip=_as_skip(skip), chains=chains if chains is not None else [[0.7, 0.3]])
    single = any(len(ch) == 2 for ch in plan.chains)
    like = x0[:1] if x0 is not None else None
    names = list(plan.basics)
    for p in plan.samplers:
        for kind in ("marginal", "joint"):
            key = f"{kind}[{p.name}]"
            if key in plan.skipped or (kind == "joint" and not (single and joint_applies(p, corruption, like))):
                continue
            names.append(key)
    return names


# ------------------------------------------------------------------- running
def check_corruption(corruption: Any, x0: Any, *, time_type: Any = None, registry: Registry | None = None,
                     samplers: Iterable[str] | str | None = None, sampler_options: Mapping[str, Mapping] | None = None,
                     n: int = 4000, alpha: float = 1e-3, seed: int = 0,
                     features: Callable[..., Any] = default_features, pair_features: Callable[..., Any] | None = None,
                     repeat: Callable[[Any, int], Any] | None = None, fine_steps: int = 200, prior_data: Any = None,
                     skip: Iterable[str] | Mapping[str, str] = (), chains: list[list[float]] | None = None
                     ) -> ConformanceReport:
    """Run the conformance kit on ``corruption`` with a data batch ``x0`` (at least one example).

    Args:
        time_type: times are snapped to its grid (default: any t in (0, 1)).
        registry: where the sampler names are looked up (default: the installed plugins).
        samplers: ``None`` (the pinned core rules the corruption supports), ``"all"`` (every registered
            sampler it supports) or a list of names (checked even if unsupported: that fails).
        sampler_options: per-sampler call options, e.g. ``{"refresh": {"amount": 0.5}}``.
        n: samples per statistical test (and rows per exact check).
        alpha: the false-alarm budget of the whole report, split evenly over its statistical tests.
        seed: seeds every draw (times, data, sampler and reference draws use independent generators).
        features: ``(x, x0, generator) -> Features | (n, k) tensor`` for marginal tests (default: named
            coordinates/projections/norm for floats; every position and the difference count for tokens).
        pair_features: ``(x_t, x_s, x0, generator) -> ...`` for joint tests (default: projections of the
            pair and of the difference for float tensors, per-position pairs for tokens; with custom
            ``features``: the change of each feature from x_t to x_s).
        repeat: ``(x0_one_example, n) -> batch`` (default: expand for tensors, indexing otherwise).
        fine_steps: grid size per chain for samplers with ``exact_marginals=False`` (ODE solvers).
        prior_data: data the prior is checked against (default: ``x0``); a corruption with ``fit`` is
            checked on a copy fitted to draws from it.
        skip: check names (or ``"marginal"``, ``"joint"`` for all of a kind) to leave out, optionally
            as a mapping name -> reason; they are listed in the report.
        chains: sampler time chains (decreasing lists) instead of the seeded default ones.
    """
    reg = registry or default_registry()
    skip = _as_skip(skip)
    report = ConformanceReport(getattr(corruption, "name", type(corruption).__name__), alpha=alpha)
    plan = _plan(corruption, x0, time_type=time_type, reg=reg, samplers=samplers,
                 sampler_options=sampler_options or {}, seed=seed, skip=skip, chains=chains)
    report.samplers = [p.name for p in plan.samplers]
    report.unsupported, report.skipped = plan.unsupported, plan.skipped
    ctx = _context(corruption, x0, n=n, seed=seed, features=features, pair_features=pair_features, repeat=repeat,
                   prior_data=prior_data, time_type=time_type)
    n_stat = sum(b in _STATISTICAL for b in plan.basics) + sum(
        _sampler_tests(p, plan, corruption, ctx.xn) for p in plan.samplers)
    each = alpha / max(n_stat, 1)
    for name in plan.basics:
        report.results.append(_run_basic(name, ctx, each))
    point_mass = "noise_posterior_explains_x_t" in plan.basics and _safe(lambda: C.posterior_is_point_mass(ctx))
    for p in plan.samplers:
        report.results += sampler_checks(ctx, p, plan.chains, each, fine_steps, bool(point_mass),
                                         marginal=f"marginal[{p.name}]" not in plan.skipped,
                                         joint=f"joint[{p.name}]" not in plan.skipped)
    return report


def _sampler_tests(p: SamplerPlan, plan: _Plan, corruption: Any, like: Any) -> int:
    count = 0 if f"marginal[{p.name}]" in plan.skipped else len(plan.chains)
    if f"joint[{p.name}]" not in plan.skipped and joint_applies(p, corruption, like):
        count += sum(len(ch) == 2 for ch in plan.chains)
    return count


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the explains check reports the posterior's own failure
        return False


_BASICS: dict[str, Callable[..., CheckResult]] = {
    "shapes": lambda ctx, a: C.shapes(ctx),
    "determinism": lambda ctx, a: C.determinism(ctx),
    "t0_identity": lambda ctx, a: C.t0_identity(ctx),
    "noise_posterior_explains_x_t": lambda ctx, a: C.explains(ctx),
    "noise_posterior_law": C.posterior_law,
    "refresh_noise_preserves_q": C.refresh_kernel,
    "schedule_matches_forward": lambda ctx, a: C.schedule_matches_forward(ctx),
    "prior": C.prior,
}


def _run_basic(name: str, ctx: KitContext, alpha: float) -> CheckResult:
    try:
        return _BASICS[name](ctx, alpha)
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported with its message
        return CheckResult(name, False, f"raised {type(exc).__name__}: {exc}")


def _default_repeat(one: Any, n: int) -> Any:
    if isinstance(one, torch.Tensor):
        return one.expand(n, *one.shape[1:]).contiguous()
    return one[torch.zeros(n, dtype=torch.long)]


def _context(corruption: Any, x0: Any, *, n: int, seed: int, features: Callable, pair_features: Callable | None,
             repeat: Callable | None, prior_data: Any, time_type: Any) -> KitContext:
    repeat = repeat or _default_repeat
    one = x0[:1]
    if pair_features is None:
        pair_features = _default_pairs if features is default_features else delta_features(features)
    rng = torch.Generator().manual_seed(seed * 7919 + 3)
    return KitContext(corruption, x0, one, repeat(one, n), n, seed, x0.device, features, pair_features, repeat,
                      probe_times(time_type, rng), x0 if prior_data is None else prior_data)


def _default_pairs(x_t: Any, x_s: Any, x0: Any, generator: torch.Generator):
    return pair_features(x_t, x_s, x0, generator)


def assert_conforms(corruption: Any, x0: Any, **kwargs: Any) -> ConformanceReport:
    """:func:`check_corruption`, raising ``AssertionError`` with the full report when any check fails."""
    report = check_corruption(corruption, x0, **kwargs)
    if not report.passed:
        raise AssertionError(str(report))
    return report


# ------------------------------------------------------- one sampler, one chain
def marginal_check(corruption: Any, x0: Any, sampler: Callable[..., Any], times: Iterable[float], *,
                   name: str = "sampler", options: Mapping[str, Any] | None = None, alpha: float = 1e-3,
                   seed: int = 0, features: Callable[..., Any] = default_features) -> CheckResult:
    """Run ``sampler`` with the oracle x0_hat = x_0 from x_t ~ p(x_t | x_0) over ``times`` (decreasing,
    ending at s > 0) and test that the result is distributed as p(x_s | x_0).

    ``x0`` is a batch (typically one example repeated n times). x_t, the sampler and the reference draw
    from independent generators. Each of the k features gets a KS test at level alpha / k, so the check
    falsely fails with probability at most ``alpha``; the detail names the worst feature.
    """
    times = [float(v) for v in times]
    ctx = KitContext(corruption, x0, x0[:1], x0, len(x0), seed, x0.device, features, _default_pairs,
                     _default_repeat, [], x0)
    c = corruption
    x_t = c.forward(x0, c.sample_noise(x0, ctx.generator("chain/x_t")), time_tensor(times[0], x0))
    x_s = sampler(FixedDenoiser(x0), c, torch.tensor(times, dtype=torch.float64), x_t,
                  generator=ctx.generator("chain/sampler"), **dict(options or {}))
    ref = c.forward(x0, c.sample_noise(x0, ctx.generator("chain/marginal")), time_tensor(times[-1], x0))
    w = worst_ks(ctx.feats(x_s, x0, "m"), ctx.feats(ref, x0, "m"), alpha)
    label = "times [" + ", ".join(f"{v:.3g}" for v in times) + "]"
    return CheckResult(f"marginal[{name}]", w.passed, f"{label}: x_s vs F_s(x_0, eps): " + w.describe())
