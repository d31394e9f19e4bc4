"""The high-level Python API: sample from a trained network by sampler *name*."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _validate
from ._registry import Registry, registry as default_registry
from .batch import is_parts
from .corruption import lacks
from .denoiser import Denoiser
from .errors import CapabilityError, ConfigError
from .grids import LOG_SNR_MIN
from .time import check_grid, lattice
from .samplers import SamplerSpec, SamplerStep
from .samplers._correct import check_draws, resolve_corrector
from .samplers._noise import per_sample_draws

__all__ = ["sample", "supported_samplers", "resolve_sampler", "resolve_steps", "sampling_grid", "explicit_grid",
           "sample_start", "describe_start"]


def supported_samplers(corruption: Any, registry: Registry | None = None) -> list[str]:
    """Names of the registered samplers whose required capabilities ``corruption`` offers."""
    reg = registry or default_registry()
    return [n for n in reg.names("sampler") if reg.supports(n, corruption)]


def resolve_sampler(name: str | SamplerSpec, corruption: Any, registry: Registry | None = None,
                    options: dict[str, Any] | None = None) -> SamplerSpec:
    """The :class:`SamplerSpec` called ``name``; a clear error if the corruption cannot support it (called with
    ``options``, which may add requirements, e.g. ``refresh`` with ``eta``)."""
    if isinstance(name, SamplerSpec):
        spec = name
        reg = registry
    else:
        reg = registry or default_registry()
        spec = reg.get("sampler", name)
    missing = spec.missing(corruption, options)
    if missing:
        cname = getattr(corruption, "name", type(corruption).__name__)
        ok = ", ".join(supported_samplers(corruption, reg)) if reg is not None else "(no registry given)"
        raise CapabilityError(
            f"sampler {spec.name!r}: {lacks(corruption, spec.required(options), missing)}. Samplers {cname!r} "
            f"supports: {ok}."
        )
    return spec


def resolve_steps(spec: SamplerSpec, steps: int | None, nfe: int | None, options: dict[str, Any] | None = None,
                  where: str = "udm.sample", corrector: Any = None) -> int:
    """The number of steps to run: ``steps``, or the most steps whose model calls fit the budget ``nfe``
    (:meth:`SamplerSpec.steps_for`, the ``corrector``'s calls included), or 50 when neither is given."""
    if steps is not None and nfe is not None:
        raise ConfigError(f"{where}: steps and nfe must not both be given (nfe sets the steps); got steps={steps!r}, "
                          f"nfe={nfe!r}. Give steps for a grid, or nfe for a budget of model calls.")
    if nfe is not None:
        return spec.steps_for(nfe, options, corrector)
    return 50 if steps is None else steps


def sampling_grid(spec: SamplerSpec, time_type: Any, steps: int, spacing: str, corruption: Any, nfe: int | None,
                  options: dict[str, Any], *, variance: Any = None, shape: tuple[int, ...] = (1,),
                  corrector: Any = None, where: str = "udm.sample") -> torch.Tensor:
    """The sampling grid of ``steps`` steps: the time type's, or for spacing ``optimal`` Analytic-DPM's trajectory
    chosen from the fitted ``variance`` table (examples of ``shape[1:]``). When ``nfe`` set the steps, a grid
    that cannot be built is reported as a budget error."""
    try:
        if spacing == "optimal":
            from .variance_trajectory import optimal_grid
            return optimal_grid(steps, variance, corruption, torch.zeros(1, *shape[1:], dtype=torch.float64))
        return time_type.grid(steps, spacing=spacing, corruption=corruption)
    except ConfigError as exc:
        if nfe is None:
            raise
        per, last = spec.per_step(options)
        raise ConfigError(f"{where}: nfe must give a grid the time type accepts; got nfe={nfe}, i.e. {steps} "
                          f"steps of {spec.name!r} ({per} model call(s) a step, {last} on the last"
                          f"{', and the corrector' if corrector is not None else ''}). Lower nfe. "
                          f"({exc})") from None


def explicit_grid(times: Any, time_type: Any, *, steps: Any = None, nfe: Any = None, spacing: str = "uniform",
                  sampler: str | None = None, options: dict[str, Any] | None = None,
                  where: str = "udm.sample") -> torch.Tensor:
    """A grid given as ``times`` (a sequence, a tensor or a :class:`udm.TunedGrid`), checked: 1-D, strictly
    decreasing, inside [0, 1], ending at 0, on the time type's lattice, and not given along with a grid request;
    a TunedGrid must run with the ``sampler`` and ``options`` it was tuned for."""
    if steps is not None or nfe is not None or spacing != "uniform":
        raise ConfigError(f"{where}: times must come alone (it is the whole grid); got times with "
                          f"{', '.join(k for k, v in (('steps', steps), ('nfe', nfe)) if v is not None) or ''}"
                          f"{'' if spacing == 'uniform' else f' spacing={spacing!r}'}. Drop steps, nfe and spacing.")
    tuned = getattr(times, "sampler", None), getattr(times, "options", None)
    if sampler is not None and tuned[0] is not None and tuned != (sampler, dict(options or {})):
        raise ConfigError(f"{where}: sampler must be the one times was tuned for, {tuned[0]!r} with options "
                          f"{tuned[1]!r} (a grid tuned for one solver's errors is no better for another's); got "
                          f"{sampler!r} with options {dict(options or {})!r}. Pass sampler=tuned.sampler, "
                          f"**tuned.options, or times=tuned.times to run its times with another sampler.")
    grid = getattr(times, "times", times)
    try:
        grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{where}: times must be a sequence of numbers, a tensor or a udm.TunedGrid; got "
                          f"{type(times).__name__} ({exc}).") from None
    if grid.numel() and not bool(torch.isfinite(grid).all()):
        raise ConfigError(f"{where}: times must be finite numbers; got {grid.tolist()[:8]}. Give N + 1 decreasing "
                          f"times in [0, 1] ending at 0.")
    try:
        grid = check_grid(grid)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('sampler: ')} Give N + 1 decreasing times in [0, 1] "
                          f"ending at 0.") from None
    if float(grid[-1]) != 0.0:
        raise ConfigError(f"{where}: times must end at 0 (where the last step returns x0_hat); got last time "
                          f"{float(grid[-1]):.6g}. Append 0.")
    t_min = getattr(time_type, "t_min", None)
    if isinstance(t_min, (int, float)) and t_min > 0 and len(grid) > 1 and float(grid[-2]) < t_min:
        raise ConfigError(f"{where}: times before the last must be >= the time type's t_min = {t_min:.6g} (the "
                          f"smallest time the network was trained at); got {float(grid[-2]):.6g}. Raise it to "
                          f"t_min or above.")
    snap = lattice(time_type)
    if snap is not None:
        off = (snap(grid) - grid).abs()
        if float(off.max()) > 1e-9:
            bad = float(grid[int(off.argmax())])
            raise ConfigError(f"{where}: times must lie on the time type's lattice (what the network was trained "
                              f"at); got t = {bad:.9g}, off it by {float(off.max()):.3g}. Snap the times with "
                              f"time_type.to_time(time_type.to_index(times)).")
    return grid


def _check_explicit_start(corruption: Any, t0: float, where: str = "udm.sample") -> None:
    """An explicit grid starting below t = 1 starts from ``noise_prior(t0)``, which neglects a(t0) x_0: refuse a
    t0 where that is not negligible (log-SNR above :data:`udm.grids.LOG_SNR_MIN`, as the noise-level spacings
    never start)."""
    schedule = getattr(corruption, "noise_schedule", None)
    if t0 == 1.0 or schedule is None or not callable(getattr(schedule, "log_snr", None)):
        return  # t0 = 1: the exact prior; no noise schedule: sample_start refuses t0 < 1 itself
    lam = float(schedule.log_snr(torch.tensor([t0], dtype=torch.float64))[0])
    if lam > LOG_SNR_MIN + 0.1:  # slack: a discrete lattice moves the noise-level grids' first time by 1/T
        raise ConfigError(f"{where}: times[0] must be 1 or a time whose log-SNR is at most about {LOG_SNR_MIN:g} (where "
                          f"the prior N(0, s^2) drops under 2% of x_0); got t_0 = {t0:.6g} with log-SNR {lam:.3g}, "
                          f"where starting from noise alone gives samples of the wrong spread. Start the grid at "
                          f"1.0, or pass x_init (x at t_0).")


def sample_start(corruption: Any, t0: float, shape: Any, generator: torch.Generator | None, *,
                 device: Any = None, dtype: torch.dtype | None = None) -> Any:
    """x at the grid's first time t0: the corruption's prior at t0 = 1, else its ``noise_prior(t0)`` (a
    linear-Gaussian corruption's x_t0 with a(t0) x_0 neglected; docs/math.md, "Time grids"). ``shape``: a tuple,
    or a mapping of parts' shapes for data made of parts."""
    if t0 == 1.0:
        with per_sample_draws(generator):
            return corruption.sample_prior(shape, generator, device=device, dtype=dtype)
    noise_prior = getattr(corruption, "noise_prior", None)
    if not callable(noise_prior):
        cname = getattr(corruption, "name", type(corruption).__name__)
        raise CapabilityError(f"udm.sample: the grid's first time must be 1 for corruption {cname!r}, which has a "
                              f"prior only at t = 1; got t_0 = {t0:.6g}. Use a spacing that starts at t = 1 "
                              f"(uniform, quadratic, trailing).")
    with per_sample_draws(generator):
        return noise_prior(t0, tuple(shape), generator, device=device, dtype=dtype)


def describe_start(corruption: Any, times: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """The grid's first time and the prior a sampling run starts from, for run records."""
    t0 = float(times[0])
    if t0 == 1.0:
        return {"first_time": 1.0, "prior": "the corruption's prior at t = 1 (sample_prior)"}
    m = corruption.marginal(torch.tensor([t0], dtype=torch.float64),
                            torch.zeros((1, *shape[1:]), dtype=torch.float64), derivatives=False)
    return {"first_time": t0, "prior": f"noise_prior: x_t0 = s(t0) eps with s(t0) = {float(m.s64.max()):.6g} "
                                       f"(a(t0) = {float(m.a64.abs().max()):.3g} times x_0 neglected)"}


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """The device and floating dtype of a network's first parameter or buffer (CPU / None if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device, (tensor.dtype if tensor.dtype.is_floating_point else None)
    return torch.device("cpu"), None


def _check_draws_variance(model: Denoiser, draws: str | None, variance: Any) -> None:
    """draws='last'/'all' draw from q_theta: refuse a network without a variance before the first model call (a
    Gaussian family; a categorical q_theta is refused by the sampling loop with its own fix)."""
    gaussian = model.family is not None and model.family.name != "categorical" \
        and not callable(getattr(model.corruption, "sample_x0", None))
    if draws in ("last", "all") and variance is None and gaussian:
        raise ConfigError(f"udm.sample: draws={draws!r} draws x_0 from q_theta, so variance must be given (q_theta's "
                          f"variance source); got variance=None. Pass variance=... (e.g. a fitted "
                          f"udm.VarianceTable, or 'head' for a network with a variance head), or draws='steps'.")


def sample(model: torch.nn.Module | Callable[..., Any], corruption: Any, time_type: Any, *, shape: tuple[int, ...],
           sampler: str | SamplerSpec = "invert", steps: int | None = None, nfe: int | None = None,
           spacing: str = "uniform", generator: torch.Generator | None = None, registry: Registry | None = None,
           callback: Callable[[SamplerStep], Any] | None = None, clamp: bool = False,
           family_options: dict[str, Any] | None = None, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None, variance: Any = None, x_init: Any = None,
           corrector: Any = None, times: Any = None, draws: str | None = None, **options: Any) -> Any:
    """Draw ``shape[0]`` samples: prior x_1, then ``steps`` reverse steps of ``sampler`` on the time grid.

    Args:
        model: a trained network (wrapped in :class:`Denoiser`) or a denoiser ``(x_t, t, g) -> x0_hat``.
        shape: ``(n, *data_shape)`` for the prior.
        sampler: a registered sampler name (``invert``, ``ddim``, ``ddpm``, ``heun``, ...) or a spec.
        steps, spacing: the time type's sampling grid (default 50 steps); ``spacing="optimal"``: the ``steps``
            times of a dense fitted ``variance`` table that minimise the NELBO (Analytic-DPM's trajectory).
        nfe: instead of ``steps``, a budget of model calls: the most steps whose calls fit it
            (:meth:`SamplerSpec.calls`: Heun makes 2 steps - 1, RK4 4 steps - 3; a corrector adds its calls after
            every step but the last). The calls a run made are ``SamplerStep.nfe`` of the last step (steps that
            change nothing may cost none).
        generator: every draw's generator; a :class:`udm.PerSampleGenerator` gives each sample its own stream
            (the same samples whatever the batch size).
        dtype: the prior's (and so the run's) dtype; default: the network's parameter dtype, else float32.
        device: where to sample; default: the network's device, else the generator's, else the CPU.
        variance: q_theta's variance source (see :class:`Denoiser`); ``None``: the mean.
        x_init: the starting batch x_{t_0} at the grid's first time (default: drawn with ``generator`` from the
            corruption's prior at t_0 = 1, else its ``noise_prior(t_0)``; which is what happens first, so
            passing that same draw changes nothing).
        corrector: a corrector run after every step but the last (a registered name such as ``refresh``,
            ``langevin``, ``ald``, ``remask``, a mapping ``{"name": ..., **options}`` or a :class:`udm.Corrector`).
        times: an explicit grid instead of ``steps``/``nfe``/``spacing``: N + 1 decreasing times in [0, 1], the
            last 0 (the N calls' times, then where x0_hat is returned), on the time type's lattice; or a
            :class:`udm.TunedGrid` (:func:`udm.tune_grid`; run it with the sampler and options it was tuned for,
            ``sampler=tuned.sampler, **tuned.options``). The run starts at ``times[0]``.
        draws: where a q_theta with a ``variance`` is drawn from (docs/math.md, "The last step"): ``steps`` (the
            default: every step but the last, which returns the mean), ``last`` (the mean on every step and a draw
            on the last: a deterministic solver that ends with a sample, not a mean, keeping the spread the mean
            removes at a wide last step) or ``all``.
        options: sampler options (``eta``, ``solver``, ...).
    Returns:
        x0 samples of ``shape``.
    """
    _validate.check_sample_args(model, corruption, time_type, shape=shape, sampler=sampler, steps=steps, spacing=spacing,
                                generator=generator, family_options=family_options, options=options, registry=registry)
    spec = resolve_sampler(sampler, corruption, registry, options)
    corrector = resolve_corrector(corrector, corruption, registry, where="udm.sample")
    check_draws(draws, "udm.sample")
    if isinstance(model, torch.nn.Module):
        model_device, model_dtype = model_device_dtype(model)
        device = device if device is not None else model_device
        dtype = dtype or model_dtype
        model = Denoiser(model.eval(), corruption, time_type, variance=variance, **(family_options or {}))
        _check_draws_variance(model, draws, variance)
    elif device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    if times is not None:
        times = explicit_grid(times, time_type, steps=steps, nfe=nfe, spacing=spacing, sampler=spec.name,
                              options=options)
        if x_init is None:
            _check_explicit_start(corruption, float(times[0]))
    else:
        steps = resolve_steps(spec, steps, nfe, options, corrector=corrector)
        times = sampling_grid(spec, time_type, steps, spacing, corruption, nfe, options, variance=variance,
                              shape=shape, corrector=corrector)
    if x_init is None:
        x_init = sample_start(corruption, float(times[0]), shape if is_parts(shape) else tuple(shape), generator,
                              device=device, dtype=dtype)
    return spec(model, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp,
                corrector=corrector, draws=draws, **options)
