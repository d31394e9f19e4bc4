"""The conformance suite a corruption plugin runs in its own tests (DESIGN.md §4).

Checks: shapes and dtypes kept; determinism under a generator; F_0 = identity; the noise posterior
explains x_t (F_t(x_0, eps_hat) = x_t); and the **marginal check**: with the oracle x0_hat = x_0,
every sampler the corruption offers carries samples of p(x_t | x_0) to samples of p(x_s | x_0),
judged by two-sample KS tests on a few scalar features with a stated family-wise error rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._registry import Registry, registry as default_registry
from ._oracle import FixedDenoiser
from ._stats import ks_two_sample

__all__ = ["CheckResult", "ConformanceReport", "default_features", "marginal_check", "check_corruption",
           "assert_conforms"]

#: options the bare rules need to run at all (presets carry their own)
DEFAULT_SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {"refresh": {"amount": 0.5}}


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    corruption: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        lines = [f"conformance of {self.corruption!r}: {'PASSED' if self.passed else 'FAILED'}"]
        lines += [f"  [{'ok' if r.passed else 'FAIL'}] {r.name}: {r.detail}" for r in self.results]
        return "\n".join(lines)


def default_features(x: Any, x0: Any, generator: torch.Generator) -> torch.Tensor:
    """Scalar features ``(n, k)`` of a batch: coordinates / random projections for float data;
    token values per position plus the number of positions differing from x_0 for integer data."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("default_features: x must be a tensor; pass features=... for other batch types.")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype.is_floating_point:
        d = flat.shape[1]
        proj = torch.randn(d, 6, generator=generator, dtype=torch.float64).to(flat.device)
        coords = flat[:, : min(d, 4)].double()
        return torch.cat([coords, flat.double() @ proj, flat.double().norm(dim=1, keepdim=True)], 1)
    pos = flat[:, : min(flat.shape[1], 12)].double()
    diff = (flat != x0.reshape(x0.shape[0], -1)).sum(1, keepdim=True).double()
    return torch.cat([pos, diff], 1)


def _t(value: float, like: Any) -> torch.Tensor:
    n = like.shape[0] if isinstance(like, torch.Tensor) else len(like)
    return torch.full((n,), float(value), dtype=torch.float64, device=like.device)


def marginal_check(corruption: Any, x0: Any, sampler: Callable[..., Any], times: Iterable[float], *,
                   name: str = "sampler", options: Mapping[str, Any] | None = None, alpha: float = 1e-3,
                   seed: int = 0, features: Callable[..., torch.Tensor] = default_features) -> CheckResult:
    """Run ``sampler`` with the oracle x0_hat = x_0 from x_t ~ p(x_t | x_0) over ``times`` (decreasing,
    ending at s > 0) and test that the result is distributed as p(x_s | x_0).

    ``x0`` is a batch (typically one example repeated n times). Each of the k features gets a KS test
    at level alpha / k, so the whole check falsely fails with probability at most ``alpha``.
    """
    times = torch.as_tensor(list(times), dtype=torch.float64)
    t, s = float(times[0]), float(times[-1])
    device = x0.device
    g = torch.Generator(device=device).manual_seed(seed)
    x_t = corruption.forward(x0, corruption.sample_noise(x0, g), _t(t, x0))
    x_s = sampler(FixedDenoiser(x0), corruption, times, x_t, generator=g, **dict(options or {}))
    ref = corruption.forward(x0, corruption.sample_noise(x0, g), _t(s, x0))
    fg = torch.Generator().manual_seed(seed + 1)
    fa = features(x_s, x0, fg)
    fb = features(ref, x0, torch.Generator().manual_seed(seed + 1))
    k = fa.shape[1]
    worst = None
    for j in range(k):
        res = ks_two_sample(fa[:, j], fb[:, j], alpha=alpha / k)
        if worst is None or res.statistic - res.critical > worst[1].statistic - worst[1].critical:
            worst = (j, res)
    j, res = worst
    tl = times.tolist()
    times_s = ", ".join(f"{v:.3g}" for v in tl) if len(tl) <= 4 else f"{tl[0]:.3g} .. {tl[-1]:.3g} in {len(tl) - 1} steps"
    detail = f"times [{times_s}]: worst KS D={res.statistic:.4f} (feature {j}) vs critical {res.critical:.4f}"
    return CheckResult(f"marginal[{name}]", res.passed, detail)


def _check(name: str, fn: Callable[[], str | None]) -> CheckResult:
    try:
        problem = fn()
    except Exception as exc:  # a crash is a failed check, reported with its message
        return CheckResult(name, False, f"raised {type(exc).__name__}: {exc}")
    return CheckResult(name, problem is None, problem or "ok")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all())
    return a == b


def check_corruption(corruption: Any, x0: Any, *, time_type: Any = None, registry: Registry | None = None,
                     samplers: Iterable[str] | None = None, sampler_options: Mapping[str, Mapping] | None = None,
                     n: int = 4000, alpha: float = 1e-3, seed: int = 0,
                     features: Callable[..., torch.Tensor] = default_features,
                     repeat: Callable[[Any, int], Any] | None = None, fine_steps: int = 200) -> ConformanceReport:
    """Run the conformance suite on ``corruption`` with a data batch ``x0`` (at least one example).

    Args:
        time_type: picks the test times from its grid (default: t = 0.7 -> 0.5 -> 0.3).
        registry: where to find samplers (default: the installed plugins).
        samplers: names to check (default: every registered sampler the corruption supports).
        sampler_options: per-sampler options, e.g. ``{"refresh": {"amount": 0.5}}``.
        n: size of each marginal-check sample.
        repeat: ``(x0_one_example, n) -> batch`` for non-tensor batches (default: ``expand`` for tensors).
        fine_steps: grid size for samplers with ``exact_marginals=False`` (ODE solvers).
    """
    reg = registry or default_registry()
    cname = getattr(corruption, "name", type(corruption).__name__)
    report = ConformanceReport(cname)
    g = lambda: torch.Generator(device=x0.device).manual_seed(seed)  # noqa: E731
    t_half = _t(0.5, x0)

    def shapes():
        xt = corruption.forward(x0, corruption.sample_noise(x0, g()), t_half)
        if isinstance(x0, torch.Tensor) and (xt.shape != x0.shape or xt.dtype != x0.dtype):
            return f"forward changed shape/dtype {tuple(x0.shape)}/{x0.dtype} -> {tuple(xt.shape)}/{xt.dtype}"
        return None

    def determinism():
        e1, e2 = corruption.sample_noise(x0, g()), corruption.sample_noise(x0, g())
        if not _same(e1, e2):
            return "sample_noise differs under equal generator seeds"
        if not _same(corruption.forward(x0, e1, t_half), corruption.forward(x0, e2, t_half)):
            return "forward is not deterministic given (x0, eps, t)"
        shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else (len(x0),)
        p1 = corruption.sample_prior(shape, g(), device=x0.device)
        p2 = corruption.sample_prior(shape, g(), device=x0.device)
        return None if _same(p1, p2) else "sample_prior differs under equal generator seeds"

    def identity():
        x = corruption.forward(x0, corruption.sample_noise(x0, g()), _t(0.0, x0))
        if isinstance(x0, torch.Tensor) and x0.dtype.is_floating_point:
            ok = torch.allclose(x, x0, atol=1e-5, rtol=1e-5)
        else:
            ok = _same(x, x0)
        return None if ok else "forward at t = 0 is not the identity"

    def explains():
        xt = corruption.forward(x0, corruption.sample_noise(x0, g()), _t(0.6, x0))
        again = corruption.forward(x0, corruption.noise_posterior(xt, x0, _t(0.6, x0), g()), _t(0.6, x0))
        ok = torch.allclose(again, xt, atol=1e-4, rtol=1e-4) if again.dtype.is_floating_point else _same(again, xt)
        return None if ok else "F_t(x0, noise_posterior(x_t, x0, t)) != x_t"

    report.results += [_check("shapes", shapes), _check("determinism", determinism), _check("t0_identity", identity)]
    if callable(getattr(corruption, "noise_posterior", None)):
        report.results.append(_check("noise_posterior_explains_x_t", explains))

    one = x0[:1]
    batch = repeat(one, n) if repeat is not None else one.expand(n, *one.shape[1:]).contiguous()
    chains = _chains(time_type)
    names = list(samplers) if samplers is not None else [
        s for s in reg.names("sampler") if reg.get("sampler", s).supports(corruption)]
    opts = {**DEFAULT_SAMPLER_OPTIONS, **dict(sampler_options or {})}
    for sname in names:
        spec = reg.get("sampler", sname)
        exact = getattr(spec, "exact_marginals", True)
        for chain in chains if exact else [torch.linspace(chains[0][0], chains[0][-1], fine_steps + 1).tolist()]:
            res = _check(f"marginal[{sname}]", lambda: None)
            try:
                res = marginal_check(corruption, batch, spec, chain, name=sname, options=opts.get(sname, {}),
                                     alpha=alpha, seed=seed, features=features)
            except Exception as exc:
                res = CheckResult(f"marginal[{sname}]", False, f"raised {type(exc).__name__}: {exc}")
            report.results.append(res)
    return report


def _chains(time_type: Any) -> list[list[float]]:
    if time_type is None:
        return [[0.7, 0.3], [0.7, 0.5, 0.3]]
    grid = time_type.grid(10).tolist() if _grid_ok(time_type, 10) else time_type.grid(4).tolist()
    i7, i5, i3 = (3, 5, 7) if len(grid) == 11 else (1, 2, 3)
    return [[grid[i7], grid[i3]], [grid[i7], grid[i5], grid[i3]]]


def _grid_ok(time_type: Any, steps: int) -> bool:
    try:
        time_type.grid(steps)
        return True
    except Exception:
        return False


def assert_conforms(corruption: Any, x0: Any, **kwargs: Any) -> ConformanceReport:
    """:func:`check_corruption`, raising ``AssertionError`` with the full report when any check fails."""
    report = check_corruption(corruption, x0, **kwargs)
    if not report.passed:
        raise AssertionError(str(report))
    return report
