"""Sampling grids tuned to a model: the N times at which a deterministic sampler's output lies closest to the exact
probability-flow ODE solution (docs/math.md, "Tuned grids").

The fixed spacings (uniform, quadratic, log-SNR, Karras) put the same times under every model; the error a
deterministic sampler makes at N calls depends on where the model's trajectories bend. Tuning measures that
error directly, offline, on a pilot batch drawn from the prior (the idea behind Align Your Steps, Sabour et al.
2024, and GITS, Chen et al. 2024; here the objective is the whole sampler's, memory included):

1. reference: the ODE integrated with error control (:func:`udm.samplers.adaptive`, Dormand-Prince 5(4) at tight
   tolerances) from each pilot start x_{t_0} to the time type's smallest time, giving x_0^* (shape = the pilot's);
2. error of a grid t_0 > t_1 > ... > t_{N-1} > t_N = 0: with d_j = the RMS over dimensions of S(grid, x_{t_0})_j -
   x_0^*_j for pilot example j (S: the sampler's output), e(grid) = mean_j d_j (``objective="mean"``, the
   default) or sqrt(mean_j d_j^2) (``"rms"``). Since S and the ODE map the same starts, the pairs are a
   coupling of the sampler's law and the ODE's, and e bounds their W1 (``mean``) or W2 (``rms``) distance per
   dimension. ``mean`` is the default because a few trajectories that the coarse early steps send to another
   mode (harmless to the law when as many cross the other way) dominate ``rms``;
3. start from the fixed spacing with the lowest e, then move one interior time at a time (coordinate descent):
   t_i is tried at ``points`` places spaced evenly in log t strictly between its neighbours (t_{N-1} between the
   smallest time and t_{N-2}), then at ``points`` more around the best of those, and keeps the best; ``sweeps``
   passes over i = 1..N-1. t_0 (and so the prior) stays the start spacing's. Every move is kept only if it lowers
   e, so the tuned grid is never worse than the best fixed spacing on the pilot batch.

The cost is model calls on the pilot batch, once per model and budget (``TunedGrid.calls``), not at sampling
time. Use the grid with ``udm.sample(..., times=tuned)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from . import _validate
from ._registry import Registry, registry as default_registry
from .api import model_device_dtype, resolve_sampler, sample_start
from .denoiser import Denoiser
from .errors import CapabilityError, ConfigError, UdmError
from .likelihoods._elbo_continuous import smallest_time
from .samplers import SamplerSpec
from .time import lattice

__all__ = ["TunedGrid", "tune_grid", "START_SPACINGS"]

#: the fixed spacings tuning starts from (the one with the lowest pilot error is taken)
START_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


@dataclass(frozen=True)
class TunedGrid:
    """A sampling grid tuned by :func:`tune_grid`.

    Attributes:
        times: (N + 1,) float64, strictly decreasing, ``times[-1] == 0``: pass as ``udm.sample(..., times=...)``.
        sampler: the sampler it was tuned for (with ``options``).
        error: e(times), the distance to the reference ODE solution on the pilot batch (``objective``; data units).
        start: the fixed spacing tuning started from, and ``start_error`` its e.
        errors: e of every fixed spacing tried (name -> e; a spacing the corruption lacks is left out).
        sweeps: e after each sweep.
        calls: model calls spent on the pilot batch, the reference's (``reference_calls``) included.
    """

    times: torch.Tensor
    sampler: str
    options: dict[str, Any]
    error: float
    start: str
    start_error: float
    errors: dict[str, float]
    sweeps: list[float]
    calls: int
    reference_calls: int
    pilot: int
    notes: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.times) - 1


def _snap(time_type: Any) -> Any:
    """Times -> the time type's lattice (``discrete``: n / T), or unchanged."""
    snap = lattice(time_type)
    return float if snap is None else (lambda t: float(snap(t)))


def tune_grid(model: Any, corruption: Any, time_type: Any, *, steps: int, shape: Sequence[int],
              sampler: str | SamplerSpec = "dpm++2m", generator: torch.Generator | None = None,
              registry: Registry | None = None, spacings: Sequence[str] = START_SPACINGS, sweeps: int = 2,
              points: int = 6, objective: Literal["mean", "rms"] = "mean", rtol: float = 1e-6, atol: float = 1e-6,
              max_calls: int = 20_000, dtype: torch.dtype | None = None, **options: Any) -> TunedGrid:
    """Tune the ``steps`` times of a deterministic ``sampler`` to ``model`` (see the module docstring).

    Args:
        model: a trained network (wrapped in :class:`udm.Denoiser`) or a denoiser ``(x_t, t, g) -> x0_hat``.
        steps: N, the model calls of the grid (the sampler's steps; one call each for the multistep solvers).
        shape: ``(n, *data_shape)`` of the pilot batch, drawn from the prior with ``generator`` (a few hundred
            examples suffice; the error is an average over them).
        sampler: a deterministic sampler with one call a step (``ddim``, ``dpm++2m``, ``dpm++3m``, ``unipc``,
            ``deis``, ...); ``options`` are its options.
        spacings: the fixed spacings to start from; sweeps, points: the search (module docstring).
        objective: ``mean`` (default): e = the mean over the pilot of each example's RMS distance to the reference
            (a W1-type bound, which a few trajectories that cross to another mode do not dominate); ``rms``: the
            root of the mean squared distance (the W2 bound of the module docstring).
        rtol, atol, max_calls: the reference ODE solve's tolerances and call limit.
        dtype: the pilot's dtype; default: a network's parameter dtype, float64 for a denoiser (float64 keeps the
            reference's error far below the sampler's). The pilot lives on the network's device (a denoiser's: the
            generator's), so tuning runs where the model does.
    Returns:
        a :class:`TunedGrid`.
    """
    where = "udm.tune_grid"
    reg = registry or default_registry()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"{where}: steps must be an integer >= 1 (the sampler's model calls); got {steps!r}.")
    if objective not in ("mean", "rms"):
        raise ConfigError(f"{where}: objective must be 'mean' or 'rms'; got {objective!r}.")
    for name, v in (("sweeps", sweeps), ("points", points)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}: {name} must be an integer >= 1; got {v!r}.")
    _validate.check_sample_args(model, corruption, time_type, shape=shape, sampler=sampler, steps=steps,
                                spacing="uniform", generator=generator, family_options=None, options=options,
                                registry=reg, where=where)
    if isinstance(spacings, str) or not isinstance(spacings, Sequence) or not all(isinstance(n, str) for n in spacings):
        raise ConfigError(f"{where}: spacings must be a sequence of spacing names; got {spacings!r}. E.g. "
                          f"spacings=('uniform', 'karras').")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ConfigError(f"{where}: {name} must be a number > 0 (the reference solve's tolerance); got {v!r}. E.g. {name}=1e-6 (the "
                              f"default).")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise ConfigError(f"{where}: max_calls must be an integer >= 1 (the reference solve's call limit); got "
                          f"{max_calls!r}. E.g. max_calls=20000 (the default).")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ConfigError(f"{where}: dtype must be a floating torch.dtype (the pilot's); got {dtype!r}. Use "
                          f"torch.float64 (or the network's dtype).")
    spec = resolve_sampler(sampler, corruption, reg, options)
    try:
        per, last = spec.per_step(options)
    except ConfigError:  # a sampler that chooses its own steps has no grid to tune
        per, last = 0, 0
    if (per, last) != (1, 1):
        raise ConfigError(f"{where}: sampler must make one model call a step (a fixed grid of N calls); got "
                          f"{spec.name!r} with {per or 'its own number of calls'} a step. Use ddim, dpm++2m, "
                          f"dpm++3m, unipc or deis.")
    adaptive = resolve_sampler("adaptive", corruption, reg)
    device = generator.device if generator is not None else torch.device("cpu")
    if isinstance(model, torch.nn.Module):
        device, net_dtype = model_device_dtype(model)
        if dtype is not None and net_dtype is not None and dtype != net_dtype:
            raise ConfigError(f"{where}: dtype must be the network's parameter dtype, {net_dtype} (the pilot is its "
                              f"input); got {dtype}. Leave dtype unset, or convert the network (e.g. .double()).")
        dtype = dtype or net_dtype
        model = Denoiser(model.eval(), corruption, time_type)
    dtype = dtype or torch.float64
    generator = generator if generator is not None else torch.Generator(device=device).manual_seed(0)
    state = generator.get_state()
    snap, t_end = _snap(time_type), smallest_time(time_type)
    if steps > 1 and snap(t_end) <= 0:
        t_end = snap(2 * t_end)

    grids: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for name in spacings:
        try:
            grids[name] = time_type.grid(steps, spacing=name, corruption=corruption).to(torch.float64)
        except (ConfigError, CapabilityError) as exc:
            notes.append(f"spacing {name!r} skipped: {exc}")
    if not grids:
        raise ConfigError(f"{where}: spacings must offer at least one grid this time type and corruption accept; got "
                          f"{list(spacings)!r}, all refused ({'; '.join(notes)}).")

    starts: dict[float, torch.Tensor] = {}
    refs: dict[float, torch.Tensor] = {}
    ref_calls = 0
    for t0 in sorted({float(g[0]) for g in grids.values()}):
        generator.set_state(state)  # the same draw at every start time
        x = sample_start(corruption, t0, tuple(shape), generator, device=device, dtype=dtype)
        nfe: list[int] = []
        ref = adaptive(model, corruption, torch.tensor([t0, t_end, 0.0], dtype=torch.float64), x,
                       method="dopri5", rtol=rtol, atol=atol, max_calls=max_calls,
                       callback=lambda s: nfe.append(s.nfe))
        starts[t0], refs[t0], ref_calls = x, ref, ref_calls + nfe[-1]

    evaluations = [0]

    def error(times: torch.Tensor, seed: int = 0) -> float:
        t0 = float(times[0])
        out = spec(model, corruption, times, starts[t0], generator=torch.Generator(device=device).manual_seed(seed),
                   **options)
        evaluations[0] += 1
        d = (out.to(torch.float64) - refs[t0].to(torch.float64)).flatten(1).pow(2).mean(1).sqrt()
        e = float(d.mean() if objective == "mean" else d.pow(2).mean().sqrt())
        return e if math.isfinite(e) else math.inf

    errors = {name: error(g) for name, g in grids.items()}
    start = min(errors, key=lambda k: errors[k])
    times, best = grids[start].clone(), errors[start]
    if not math.isfinite(best):
        raise UdmError(f"{where}: the sampler's output must be finite on at least one start spacing; got NaN/inf on "
                       f"every one ({', '.join(errors)}). Check the model's output at those grids' times, or give "
                       f"other spacings.")
    if not math.isclose(error(times, seed=1), best, rel_tol=1e-5):  # the tolerance: float32 / GPU reductions
        raise ConfigError(f"{where}: sampler must be deterministic (the reference is the probability-flow ODE, and a "
                          f"coupling error means nothing for a stochastic sampler); got {spec.name!r}, whose output "
                          f"changes with the generator. Use ddim, dpm++2m, dpm++3m, unipc or deis.")
    history: list[float] = []
    for _ in range(sweeps):
        for i in range(1, steps):
            times, best = _move(times, i, best, error, snap, t_end, points)
        history.append(best)
    return TunedGrid(times=times, sampler=spec.name, options=dict(options), error=best, start=start,
                     start_error=errors[start], errors=errors, sweeps=history,
                     calls=ref_calls + evaluations[0] * steps, reference_calls=ref_calls, pilot=int(shape[0]),
                     notes=notes)


def _move(times: torch.Tensor, i: int, best: float, error: Any, snap: Any, t_end: float,
          points: int) -> tuple[torch.Tensor, float]:
    """Coordinate search of interior time t_i between its neighbours, in log t: ``points`` evenly spaced
    candidates, then ``points`` more between the best one's neighbours; keeps a candidate only if it lowers the
    error."""
    hi = float(times[i - 1])
    lo = float(times[i + 1]) if float(times[i + 1]) > 0 else t_end
    a, b = math.log(lo), math.log(hi)
    seen = {float(times[i])}  # snapping to a lattice, and the second round, repeat candidates: each runs once
    for _ in range(2):
        cands = [a + (b - a) * (k + 1) / (points + 1) for k in range(points)]
        if float(times[i + 1]) == 0:  # the last time before 0 may sit at the smallest time itself
            cands = [a, *cands]
        tried: list[tuple[float, float]] = []
        for u in cands:
            t = snap(max(math.exp(u), lo))  # exp(log(lo)) may fall an ulp below lo, the smallest time
            nxt = float(times[i + 1])
            if not (nxt < t < hi) or t in seen:
                continue
            seen.add(t)
            trial = times.clone()
            trial[i] = t
            e = error(trial)
            tried.append((u, e))
            if e < best:
                times, best = trial, e
        if not tried:
            break
        step = (b - a) / (points + 1)
        u_best = math.log(float(times[i]))
        a, b = max(a, u_best - step), min(b, u_best + step)
    return times, best
