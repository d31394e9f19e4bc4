"""The reverse-step rules of DESIGN.md §1, each written once for every corruption.

Every public function here is a sampler with the shared signature::

    rule(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False, **options) -> x_0

and every step is "predict x0_hat, then correct" (MATH.md eq. 1.14):

* ``renoise``:  x_s = F_s(x0_hat, eps'), eps' ~ q fresh                (eq. 1.8; Cold "naive")
* ``invert``:   x_s = F_s(x0_hat, eps_hat), eps_hat ~ p(eps | x_t, x0_hat)  (eq. 1.9; DDIM eta = 0)
* ``refresh``:  x_s = F_s(x0_hat, K_a(eps_hat))                         (eq. 1.10; DDIM-eta, DDPM)
* ``residual``: x_s = x_t + F_s(x0_hat, eps_hat) - F_t(x0_hat, eps_hat)   (eq. 1.12; Cold Alg. 2)
* ``ode``:      dx/dt = d/dt F_t(x0_hat, eps_hat), Euler / Heun / RK4     (eq. 1.13; PF-ODE)
* ``posterior``: x_s ~ the corruption's closed-form p(x_s | x_t, x0_hat)  (DDPM posterior)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._tensor import append_dims
from ..affine import AffineSchedule, ddpm_refresh_amount
from ..errors import ConfigError
from ..time import check_grid
from ._loop import StepContext, predict, require, sample_loop

__all__ = ["renoise", "invert", "refresh", "residual", "ode", "posterior", "RULES", "SOLVERS"]


def _renoise_step(ctx: StepContext, x, x0, t, s):
    return ctx.corruption.forward(x0, ctx.corruption.sample_noise(x0, ctx.generator), s)


def _invert_step(ctx: StepContext, x, x0, t, s):
    return ctx.corruption.forward(x0, ctx.corruption.noise_posterior(x, x0, t, ctx.generator), s)


def _residual_step(ctx: StepContext, x, x0, t, s):
    c = ctx.corruption
    eps = c.noise_posterior(x, x0, t, ctx.generator)
    return x + c.forward(x0, eps, s) - c.forward(x0, eps, t)


def _posterior_step(ctx: StepContext, x, x0, t, s):
    return ctx.corruption.posterior(x, x0, t, s, ctx.generator)


def renoise(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Baseline rule (MATH.md eq. 1.8): ignore x_t and re-corrupt x0_hat with fresh noise."""
    return sample_loop(_renoise_step, denoiser, corruption, times, x_init,
                       generator=generator, callback=callback, clamp=clamp)


def invert(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Deterministic inversion (eq. 1.9): reuse the noise that explains x_t. DDIM (eta = 0) for the
    Gaussian; the ancestral step of absorbing diffusion when the noise posterior is sampled."""
    require(corruption, "invert", "noise_posterior")
    return sample_loop(_invert_step, denoiser, corruption, times, x_init,
                       generator=generator, callback=callback, clamp=clamp)


def _grid_refresh_amounts(corruption, times, eta: float) -> list[float]:
    """ddpm_refresh_amount(schedule(t_i), schedule(t_{i+1}), eta) for every step i of the grid ``times``.

    Evaluated once per sampler call on the whole grid ``(N + 1,)`` rather than once per step on
    ``(batch,)`` tensors: ``schedule`` also returns t-derivatives, which cost milliseconds per call
    (``torch.func.jvp``). The loop's times are the grid's own float64 values, so the amounts are the same.
    """
    sched = corruption.schedule(check_grid(times))
    st = AffineSchedule(sched.alpha[:-1], sched.sigma[:-1])
    ss = AffineSchedule(sched.alpha[1:], sched.sigma[1:])
    return ddpm_refresh_amount(st, ss, eta).tolist()


def refresh(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
            eta: float | None = None, amount: float | Callable[[Any, Any], Any] | None = None):
    """Partial refresh (eq. 1.10): x_s = F_s(x0_hat, refresh_noise(eps_hat, a)).

    Give exactly one of:
        eta: in [0, 1]; needs an affine ``schedule``: a = eta sqrt(1 - SNR_t/SNR_s), which is
            DDIM-eta (Song et al. 2021, eq. 16); eta = 1 is DDPM ancestral sampling on any sub-grid.
        amount: a constant a in [0, 1], or a callable ``(t, s) -> a`` with ``(batch,)`` tensors.
    """
    require(corruption, "refresh", "noise_posterior", "refresh_noise")
    if (eta is None) == (amount is None):
        raise ConfigError(f"sampler 'refresh': give exactly one of eta or amount; got eta={eta!r}, amount={amount!r}.")
    if eta is not None:
        if not 0 <= float(eta) <= 1:
            raise ConfigError(f"sampler 'refresh': eta must be in [0, 1]; got {eta!r}.")
        require(corruption, "refresh(eta)", "schedule")
        amounts = _grid_refresh_amounts(corruption, times, float(eta))

        def a_of(ctx, t, s):
            return amounts[ctx.index]
    elif callable(amount):
        def a_of(ctx, t, s):
            return amount(t, s)
    else:
        if not 0 <= float(amount) <= 1:
            raise ConfigError(f"sampler 'refresh': amount must be in [0, 1]; got {amount!r}.")

        def a_of(ctx, t, s):
            return float(amount)

    def step(ctx: StepContext, x, x0, t, s):
        c = ctx.corruption
        eps = c.refresh_noise(c.noise_posterior(x, x0, t, ctx.generator), a_of(ctx, t, s), ctx.generator)
        return c.forward(x0, eps, s)

    return sample_loop(step, denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)


def residual(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Residual rule (eq. 1.12, Cold Diffusion Algorithm 2): carry x_t - F_t(x0_hat, eps_hat) forward.
    Identical to ``invert`` whenever x_t = F_t(x0_hat, eps_hat) exactly."""
    require(corruption, "residual", "noise_posterior", "vector_space")
    return sample_loop(_residual_step, denoiser, corruption, times, x_init,
                       generator=generator, callback=callback, clamp=clamp)


def posterior(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False):
    """Sample the corruption's closed-form p(x_s | x_t, x0_hat) (the DDPM posterior for Gaussians)."""
    require(corruption, "posterior", "posterior")
    return sample_loop(_posterior_step, denoiser, corruption, times, x_init,
                       generator=generator, callback=callback, clamp=clamp)


def velocity(ctx: StepContext, x, t, x0=None):
    """dx/dt = d/dt F_t(x0_hat, eps_hat) at fixed (x0_hat, eps_hat) (MATH.md eq. 1.13), by forward-mode AD."""
    c = ctx.corruption
    if x0 is None:
        x0 = predict(ctx, x, t)
    eps = c.noise_posterior(x, x0, t, ctx.generator)
    _, v = torch.func.jvp(lambda tt: c.forward(x0, eps, tt), (t,), (torch.ones_like(t),))
    return v


def _euler(ctx, x, x0, t, s):
    return x + append_dims(s - t, x.ndim).to(x.dtype) * velocity(ctx, x, t, x0)


def _heun(ctx, x, x0, t, s):
    h = append_dims(s - t, x.ndim).to(x.dtype)
    v1 = velocity(ctx, x, t, x0)
    v2 = velocity(ctx, x + h * v1, s)
    return x + h * (v1 + v2) / 2


def _rk4(ctx, x, x0, t, s):
    h = append_dims(s - t, x.ndim).to(x.dtype)
    m = (t + s) / 2
    k1 = velocity(ctx, x, t, x0)
    k2 = velocity(ctx, x + h / 2 * k1, m)
    k3 = velocity(ctx, x + h / 2 * k2, m)
    k4 = velocity(ctx, x + h * k3, s)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


SOLVERS = {"euler": _euler, "heun": _heun, "rk4": _rk4}


def ode(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False, solver: str = "heun"):
    """Integrate dx/dt = d/dt F_t(x0_hat, eps_hat) (eq. 1.13) from times[0] down the grid.

    For affine Gaussian corruptions this is the probability-flow ODE (= the DDIM ODE, eq. 3.3); for
    non-affine F it is the plug-in heuristic of MATH.md §1.7. ``solver``: euler (1 call/step),
    heun (2, 2nd order), rk4 (4, 4th order). The last step to t = 0 returns x0_hat.
    """
    from ..errors import did_you_mean

    require(corruption, "ode", "noise_posterior", "vector_space")
    if solver not in SOLVERS:
        raise ConfigError(
            f"sampler 'ode': solver must be one of {', '.join(SOLVERS)}; got {solver!r}.{did_you_mean(str(solver), SOLVERS)}"
        )
    return sample_loop(SOLVERS[solver], denoiser, corruption, times, x_init,
                       generator=generator, callback=callback, clamp=clamp)


#: rule name -> (function, capabilities it needs)
RULES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "renoise": (renoise, ()),
    "invert": (invert, ("noise_posterior",)),
    "refresh": (refresh, ("noise_posterior", "refresh_noise")),
    "residual": (residual, ("noise_posterior", "vector_space")),
    "ode": (ode, ("noise_posterior", "vector_space")),
    "posterior": (posterior, ("posterior",)),
}
