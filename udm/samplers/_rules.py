"""The reverse-step rules, each written once for every corruption (docs/explanation.md).

Every public function here is a sampler with the shared signature::

    rule(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False, **options) -> x_0

and every step is "predict x0_hat, then correct" (docs/math.md, "Predict, then correct"):

* ``renoise``:  x_s = F_s(x0_hat, eps'), eps' ~ q fresh                    (Cold Diffusion "naive")
* ``invert``:   x_s = F_s(x0_hat, eps_hat), eps_hat ~ p(eps | x_t, x0_hat)  (DDIM, eta = 0)
* ``refresh``:  x_s = F_s(x0_hat, K_a(eps_hat))                             (DDIM-eta; DDPM at eta = 1)
* ``residual``: x_s = x_t + F_s(x0_hat, eps_hat) - F_t(x0_hat, eps_hat)      (Cold Diffusion Alg. 2)
* ``ode``:      dx/dt = d/dt F_t(x0_hat, eps_hat), Euler / Heun / RK4        (probability-flow ODE)
* ``posterior``: x_s ~ the corruption's closed-form p(x_s | x_t, x0_hat)     (DDPM posterior)

Each is a plain loop on :class:`~udm.samplers.Sampling`; what it needs from the corruption is declared
next to it with :func:`~udm.samplers.requires`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from ..errors import ConfigError, did_you_mean
from ._loop import Sampling
from ._requires import calls_per_step, requires

__all__ = ["renoise", "invert", "refresh", "residual", "ode", "posterior", "RULES", "SOLVERS"]


@requires()
def renoise(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Baseline rule: ignore x_t and re-corrupt x0_hat with fresh noise, x_s = F_s(x0_hat, eps')."""
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x0 = pred.x0_hat
        x = run.final(pred) if run.last(i) else run.forward(x0, corruption.sample_noise(x0, generator), i + 1)
        run.report(i, x, pred)
    return x


@requires("noise_posterior")
def invert(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Reuse the noise that explains x_t: x_s = F_s(x0_hat, eps_hat). DDIM (eta = 0) for Gaussian noise;
    the ancestral step of absorbing diffusion when the noise posterior is sampled."""
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x0 = pred.x0_hat
        x = run.final(pred) if run.last(i) else run.forward(x0, run.noise(x, x0, i), i + 1)
        run.report(i, x, pred)
    return x


@requires("noise_posterior", "refresh_noise", eta=("linear_gaussian",))
def refresh(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
            eta: float | None = None, amount: float | Callable[[Any, Any], Any] | None = None):
    """Partial refresh: x_s = F_s(x0_hat, refresh_noise(eps_hat, a)).

    Give exactly one of:
        eta: in [0, 1]; linear-Gaussian corruptions: a = eta sqrt(1 - SNR_t/SNR_s) per basis coefficient,
            which is DDIM-eta (Song et al. 2021, eq. 16); eta = 1 is DDPM ancestral sampling on any sub-grid.
        amount: a constant a in [0, 1], or a callable ``(t, s) -> a`` with ``(batch,)`` tensors.
    """
    if (eta is None) == (amount is None):
        raise ConfigError(f"sampler 'refresh': give exactly one of eta or amount; got eta={eta!r}, amount={amount!r}.")
    if eta is not None and not 0 <= float(eta) <= 1:
        raise ConfigError(f"sampler 'refresh': eta must be in [0, 1]; got {eta!r}.")
    if amount is not None and not callable(amount) and not 0 <= float(amount) <= 1:
        raise ConfigError(f"sampler 'refresh': amount must be in [0, 1]; got {amount!r}.")
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    amounts = run.pair_table(corruption.refresh_amounts, float(eta)) if eta is not None else None
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x0 = pred.x0_hat
        if run.last(i):
            x = run.final(pred)
        elif eta is not None:
            x = corruption.refresh_step(run.points[i].marginal, run.points[i + 1].marginal, x, x0, float(eta),
                                        generator, amounts[i])
        else:
            a = amount(run.points[i].t, run.points[i + 1].t) if callable(amount) else float(amount)
            x = run.forward(x0, corruption.refresh_noise(run.noise(x, x0, i), a, generator), i + 1)
        run.report(i, x, pred)
    return x


@requires("noise_posterior", "vector_space")
def residual(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Carry the residual x_t - F_t(x0_hat, eps_hat) forward: x_s = x_t + F_s(x0_hat, eps_hat) -
    F_t(x0_hat, eps_hat) (Cold Diffusion Algorithm 2). Identical to ``invert`` whenever
    x_t = F_t(x0_hat, eps_hat) exactly (an exact noise posterior with noise at t)."""
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x0 = pred.x0_hat
        if run.last(i):
            x = run.final(pred)
        else:
            eps = run.noise(x, x0, i)
            x = x + run.forward(x0, eps, i + 1) - run.forward(x0, eps, i)
        run.report(i, x, pred)
    return x


@requires("posterior")
def posterior(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Sample the corruption's closed-form p(x_s | x_t, x0_hat) (the DDPM posterior for Gaussians)."""
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x = run.final(pred) if run.last(i) else run.posterior(x, pred.x0_hat, i)
        run.report(i, x, pred)
    return x


# --------------------------------------------------------------------------------------- ODE
def _velocity(run: Sampling, x, where, x0=None):
    """dx/dt = d/dt F_t(x0_hat, eps_hat) at fixed (x0_hat, eps_hat); predicts x0_hat when not given."""
    if x0 is None:
        x0 = run.predict(x, where).x0_hat
    return run.velocity(x0, run.noise(x, x0, where), where)


def _euler(run, x, x0, i):
    h = run.values[i + 1] - run.values[i]
    return x + h * _velocity(run, x, i, x0)


def _heun(run, x, x0, i):
    h = run.values[i + 1] - run.values[i]
    v1 = _velocity(run, x, i, x0)
    v2 = _velocity(run, x + h * v1, i + 1)
    return x + (h / 2) * (v1 + v2)


def _rk4(run, x, x0, i):
    h = run.values[i + 1] - run.values[i]
    mid = run.point((run.values[i] + run.values[i + 1]) / 2)
    k1 = _velocity(run, x, i, x0)
    k2 = _velocity(run, x + (h / 2) * k1, mid)
    k3 = _velocity(run, x + (h / 2) * k2, mid)
    k4 = _velocity(run, x + h * k3, i + 1)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


SOLVERS = {"euler": _euler, "heun": _heun, "rk4": _rk4}
#: model calls per step of each solver (the last step to t = 0 always makes one)
CALLS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


def _solver(solver: str) -> Callable[..., Any]:
    """The step function of ``solver`` (a clear error for an unknown name)."""
    if solver not in SOLVERS:
        raise ConfigError(
            f"sampler 'ode': solver must be one of {', '.join(SOLVERS)}; got {solver!r}.{did_you_mean(str(solver), SOLVERS)}"
        )
    return SOLVERS[solver]


def _ode_calls(options) -> int:
    """Model calls of an ``ode`` step (but the last, which makes one) with ``options``."""
    _solver(options["solver"])
    return CALLS_PER_STEP[options["solver"]]


@calls_per_step(_ode_calls)
@requires("noise_posterior", "vector_space")
def ode(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
        solver: Literal["euler", "heun", "rk4"] = "heun"):
    """Integrate dx/dt = d/dt F_t(x0_hat, eps_hat) from times[0] down the grid.

    For linear-Gaussian corruptions this is the probability-flow ODE (= the DDIM ODE); for other F it is
    the plug-in heuristic (docs/math.md, "The ODE rule"). ``solver``: euler (1 model call per step),
    heun (2, second order), rk4 (4, fourth order). The last step to t = 0 returns x0_hat.
    """
    step = _solver(solver)
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x = run.final(pred) if run.last(i) else step(run, x, pred.x0_hat, i)
        run.report(i, x, pred)
    return x


#: rule name -> function (each declares its requirements with ``@requires``)
RULES: dict[str, Callable[..., Any]] = {
    "renoise": renoise, "invert": invert, "refresh": refresh, "residual": residual, "ode": ode,
    "posterior": posterior,
}
