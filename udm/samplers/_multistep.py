"""Multistep exponential-integrator solvers, written once on the linear-Gaussian layer (docs/math.md, "Fast solvers").

``multistep`` is ``invert`` with x0_hat replaced by an extrapolation D of the prediction history in the half
log-SNR lambda = log(a/s), per basis coefficient (so ``blur`` is solved per DCT frequency)::

    x_s = F_s(D, eps_hat(x_t, D)) = (s_s/s_t) x_t + a_s (1 - e^{-h}) D,        h = lambda_s - lambda_t,

and with ``eta`` > 0 it is ``refresh`` (DDIM-eta) with D; eta = 1 is the SDE variant
x_s = (s_s/s_t) e^{-h} x_t + a_s (1 - e^{-2h}) D + s_s sqrt(1 - e^{-2h}) z. First order (D = x0_hat) *is* DDIM
(``invert``). The methods differ only in the weights of D (:mod:`udm.samplers._weights`):

* ``dpm++``: DPM-Solver++ 2M / 3M (Lu et al. 2022), ODE or SDE (``eta``);
* ``unipc``: UniPC's predictor UniP (Zhao et al. 2023), B(h) = ``variant``;
* ``deis``: DEIS tAB (Zhang & Chen 2023), which extrapolates the noise prediction instead: D is the x_0 that
  explains x_t with the extrapolated noise.

``unic=True`` adds UniPC's corrector UniC: once x0_hat is predicted at the new point, the step that led
there is redone with that prediction in the history (no extra model call; the order rises by one). The last
step to t = 0 returns the prediction's mean. Steps too few for ``order`` run at the order they allow, with a
warning.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError, did_you_mean
from ..linear_gaussian import lincomb
from ._loop import Sampling
from ._requires import requires
from ._weights import deis_weights, dpm_weights, plan, step_orders, unipc_weights

__all__ = ["multistep", "METHODS"]


@dataclass(frozen=True)
class Method:
    """A multistep solver: its weights ``(q, h, d, eta, variant) -> list``, whether they act on the noise
    history, whether it has a stochastic variant, and below how many steps its last steps lower the order
    (``None``: always; diffusers' rules)."""

    weights: Callable[..., list]
    eps_history: bool = False
    stochastic: bool = False
    final_below: int | None = 15


METHODS: dict[str, Method] = {
    "dpm++": Method(lambda q, h, d, eta, variant: dpm_weights(q, h, d, eta=eta), stochastic=True),
    "unipc": Method(lambda q, h, d, eta, variant: unipc_weights(q, h, d, variant=variant, corrector=False),
                    final_below=None),
    "deis": Method(lambda q, h, d, eta, variant: deis_weights(q, h, d), eps_history=True),
}
VARIANTS = ("bh1", "bh2")


def _check(method: str, order: Any, eta: Any, unic: bool, variant: str) -> Method:
    where = "sampler 'multistep'"
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {', '.join(METHODS)}; got {method!r}."
                          f"{did_you_mean(str(method), METHODS)}")
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ConfigError(f"{where}: order must be 1, 2 or 3; got {order!r}. Use 1 (DDIM), 2 or 3; a grid with fewer "
                          f"steps than the order lowers it by itself.")
    if not 0 <= float(eta) <= 1:
        raise ConfigError(f"{where}: eta must be in [0, 1]; got {eta!r}. 0 is the ODE, 1 the SDE variant.")
    m = METHODS[method]
    if float(eta) > 0 and not m.stochastic:
        raise ConfigError(f"{where}: eta must be 0 with method {method!r}; got {eta!r}. Only method 'dpm++' has a "
                          f"stochastic (SDE) variant.")
    if unic and (float(eta) > 0 or m.eps_history):
        raise ConfigError(f"{where}: unic must be False with method {method!r} and eta={eta!r}; got True. "
                          f"UniPC's corrector redoes deterministic steps on the x0_hat history (methods dpm++, unipc "
                          f"with eta = 0).")
    if variant not in VARIANTS:
        raise ConfigError(f"{where}: variant must be one of {', '.join(VARIANTS)}; got {variant!r}."
                          f"{did_you_mean(str(variant), VARIANTS)}")
    return m


def _zero(w: Any) -> bool:
    """A weight that is the number 0 (a dropped history term; tensor weights are always applied)."""
    return isinstance(w, float) and w == 0.0


class _History:
    """The newest-first history of q_theta's means (and, for DEIS, of the noise they imply) and the weighted sums
    of it, in data space for scalar weights and in the corruption's basis for per-coefficient ones."""

    def __init__(self, corruption: Any, per_coefficient: bool, size: int) -> None:
        self.c, self.per_coef = corruption, per_coefficient
        self.means: deque = deque(maxlen=size)
        self.eps: deque = deque(maxlen=size)

    def combine(self, terms: list[tuple[Any, Any]]) -> Any:
        """sum_j w_j x_j for (w_j, x_j) pairs, weights per basis coefficient when they are tensors (``None`` when
        every weight is the number 0)."""
        terms = [(w, x) for w, x in terms if not _zero(w)]
        if not terms:
            return None
        if not self.per_coef:
            w0, out = terms[0]
            out = out if w0 == 1.0 else out * w0
            for w, x in terms[1:]:
                out = lincomb(out, 1, x, w)
            return out
        acc = sum(w * self.c.to_basis(x) for w, x in terms)
        return self.c.from_basis(acc)

    def estimate(self, x0_weights: tuple, eps_weights: tuple, history: list | None = None) -> Any:
        """D = sum_j w_j mean_{i-j} + sum_{j>=1} k_j (eps_i - eps_{i-j}) (DEIS)."""
        means = history if history is not None else list(self.means)
        d = self.combine(list(zip(x0_weights, means)))
        e = list(self.eps)
        extra = self.combine([(k, e[0] - e[j + 1]) for j, k in enumerate(eps_weights) if not _zero(k)])
        return d if extra is None else d + extra


def _advance(run: Sampling, x: Any, d: Any, i: int, eta: float, amounts: list | None) -> Any:
    """invert (eta = 0) or DDIM-eta refresh from grid point i to i + 1 with x0_hat = d."""
    if amounts is None:
        return run.forward(d, run.noise(x, d, i), i + 1)
    return run.corruption.refresh_step(run.points[i].marginal, run.points[i + 1].marginal, x, d, eta,
                                       run.generator, amounts[i])


@requires("linear_gaussian")
def multistep(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
              method: Literal["dpm++", "unipc", "deis"] = "dpm++", order: int = 2, eta: float = 0.0,
              unic: bool = False, variant: Literal["bh1", "bh2"] = "bh2", lower_order_final: bool = True):
    """Multistep exponential integrator: ``invert`` (``refresh`` with ``eta``) with x0_hat extrapolated in log-SNR.

    Args:
        method: ``dpm++`` (DPM-Solver++), ``unipc`` (UniP), ``deis`` (DEIS tAB).
        order: 1 (= DDIM for every method), 2 or 3; the first steps warm up from order 1.
        eta: in [0, 1], ``dpm++`` only: 0 is the probability-flow ODE, 1 the SDE variant (DPM-Solver++ 2M SDE).
        unic: UniPC's corrector UniC after every step but the last (no extra model call). Named apart from
            ``corrector``, the predictor-corrector option every sampler takes (a corrector plugin, own calls).
        variant: UniPC's B(h): ``bh1`` (h) or ``bh2`` (e^h - 1; the reference implementation's default).
        lower_order_final: lower the order of the last steps (for fewer than 15 steps with ``dpm++``/``deis``,
            always with ``unipc``; diffusers' rules), which keeps few-step sampling stable.
    """
    m = _check(method, order, eta, unic, variant)
    eta = float(eta)
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    orders = step_orders(run.steps, order, lower_order_final, m.final_below)
    reached = max([o for i, o in enumerate(orders) if not run.last(i)] or [1])
    if reached < order:
        warnings.warn(f"sampler 'multistep': order {order} needs more steps; {run.steps} step(s) reach order "
                      f"{reached} at most (warm-up from order 1{', lower-order final steps' if lower_order_final else ''})."
                      f" Use more steps or a lower order.", UserWarning, stacklevel=3)
    plans, per_coef = plan(run.table, x_init, lambda q, h, d: m.weights(q, h, d, eta, variant), orders,
                           eps_history=m.eps_history,
                           corrector=(lambda q, h, d: unipc_weights(q, h, d, variant=variant, corrector=True))
                           if unic else None)
    amounts = run.pair_table(corruption.refresh_amounts, eta) if eta > 0 else None
    hist = _History(corruption, per_coef, order + 1)
    x, before, before_delta = x_init, None, None
    for i in run:
        pred = run.predict(x, i)
        mean = pred.mean if pred.mean is not None else pred.x0_hat
        delta = None if pred.x0_hat is mean else pred.x0_hat - mean  # a draw of q_theta: added once, not extrapolated
        if unic and before is not None and not run.last(i):  # UniC: redo step i - 1 with mean_i known
            d = hist.estimate(plans[i - 1].corrector, (), [mean, *hist.means])
            x = _advance(run, before, d if before_delta is None else d + before_delta, i - 1, eta, amounts)
        hist.means.appendleft(mean)
        if m.eps_history:
            hist.eps.appendleft(run.noise(x, mean, i))
        if run.last(i):
            x = run.final(pred)
        else:
            d = hist.estimate(plans[i].x0, plans[i].eps)
            before, before_delta = x, delta
            x = _advance(run, x, d if delta is None else d + delta, i, eta, amounts)
        run.report(i, x, pred)
    return x
