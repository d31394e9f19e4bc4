"""The built-in correctors (docs/math.md, "The SDE view and correctors"): moves at a fixed time t that keep p_t.

* ``refresh``: the same-time refresh x_t' = F_t(x0_hat, refresh(eps_hat, r)) for every corruption with a noise
  posterior and a refresh kernel. With x0_hat drawn from the exact q(x_0 | x_t), (x0_hat, eps') has the law
  p(x_0) q(eps) again, so x_t' ~ p_t exactly, for any r in [0, 1]. For Gaussian noise and the posterior mean it
  is a Langevin step of size delta = r^2 s_t^2 up to O(r^4).
* ``langevin``: score_sde's ``LangevinCorrector`` (Song et al. 2021, Algorithm 5):
  x <- x + e score + sqrt(2 e) z with e = 2 (snr ||z|| / ||score||)^2, the norms averaged over the batch as in
  score_sde. Linear-Gaussian corruptions; exact as e -> 0. (With per-sample norms e would depend on x, and the
  chain would no longer keep p_t: where the score vanishes e blows up.)
* ``ald``: score_sde's ``AnnealedLangevinDynamics`` (Song & Ermon 2019): e = 2 (snr s_t)^2 per basis coefficient.
* ``remask``: ReMDM (Wang et al. 2025) remasking for masked diffusion, as a same-time refresh of the per-position
  uniforms: at masking level tau_t a refresh of amount r re-masks each visible token with probability
  sigma = r tau_t and reveals each masked one with probability r (1 - tau_t), so the law p_t is kept. ReMDM's
  schedules for sigma: ``rescale`` sigma = eta sigma_max, ``cap`` sigma = min(eta, sigma_max), with
  sigma_max = tau_t (r = 1, the largest a same-time refresh allows); ``confidence`` spreads the ``rescale``
  remasking over the visible tokens in proportion to softmax(-psi), psi the probability each token had when it
  was revealed (its average amount stays eta), so unlikely tokens are reconsidered first. ``confidence`` depends
  on the tokens, so it does not keep p_t exactly (a heuristic, as in ReMDM).

score_sde scales the Langevin step by alpha_i = 1 - beta_i on VP grids; udm uses 1 (the factor differs from 1 by
beta_i, under 2% for 1000-step VP grids).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

import udm
from udm._schema import Interval
from udm.errors import ConfigError
from udm.samplers import scale_coefficients

__all__ = ["RefreshCorrector", "LangevinCorrector", "AnnealedLangevin", "RemaskCorrector"]

Amount = Annotated[float, Interval(ge=0, le=1)]
Snr = Annotated[float, Interval(gt=0)]


def _check(where: str, key: str, value, ok: bool, rule: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        raise ConfigError(f"corrector {where!r}: {key} must be {rule}; got {value!r}. {fix}")


class RefreshCorrector(udm.Corrector):
    """x_t' = F_t(x0_hat, refresh_noise(eps_hat, r)) at the time the predictor reached (see the module docstring).

    Args:
        steps: corrector steps after each predictor step (one model call each).
        amount: r in [0, 1]; 0 changes nothing, 1 redraws the noise afresh (x_t' = F_t(x0_hat, fresh eps)).
        last: run only after the last ``last`` predictor steps (``None``: after every step but the last).
        share: hand the last step's prediction on to the predictor's next step, which then makes no call of its
            own (one model call fewer per application). Exact when x0_hat is a draw of q(x_0 | x_t): it is then a
            draw given the refreshed state too (ReMDM's remasking posterior uses one prediction the same way).
    """

    name = "refresh"
    requires = ("noise_posterior", "refresh_noise")

    def __init__(self, steps: Annotated[int, Interval(ge=1)] = 1, amount: Amount = 0.3,
                 last: Annotated[int, Interval(ge=1)] | None = None, share: bool = False) -> None:
        super().__init__(steps, last)
        _check(self.name, "amount", amount, isinstance(amount, (int, float)) and 0 <= amount <= 1, "a number in [0, 1]",
               "0 changes nothing, 1 redraws the noise afresh; Langevin-sized steps are 0.1 to 0.5.")
        self.amount, self.share = float(amount), bool(share)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, amount={self.amount}, last={self.last}, share={self.share})"

    def calls(self) -> int:
        return self.steps - (1 if self.share else 0)

    def correct(self, run, x, where, pred, state):
        for k in range(self.steps):
            x = self.step(run, x, where, state, hand_on=self.share and k == self.steps - 1)
        return x

    def amounts(self, run, x, where: int, pred, state):
        """The refresh amount at grid point ``where``: a number, ``(batch,)`` or per position. Default: ``amount``."""
        return self.amount

    def step(self, run, x, where, state, hand_on: bool = False):
        pred = run.predict(x, where)
        x0 = pred.x0_hat
        eps = run.noise(x, x0, where)
        fresh = run.corruption.refresh_noise(eps, self.amounts(run, x, where, pred, state), run.generator)
        new = self.revealed(run.forward(x0, fresh, where), x, pred, state)
        if hand_on:
            run.share(new, where, pred)
        return new

    def revealed(self, new, old, pred, state):
        """Hook after each step (the remasking confidence records what was revealed); returns ``new``."""
        return new


class _Langevin(udm.Corrector):
    """x <- x + e score + sqrt(2 e) z per basis coefficient, e from :meth:`step_size` (score_sde's correctors)."""

    requires = ("linear_gaussian",)

    def __init__(self, steps: Annotated[int, Interval(ge=1)] = 1, snr: Snr = 0.16,
                 last: Annotated[int, Interval(ge=1)] | None = None) -> None:
        super().__init__(steps, last)
        _check(self.name, "snr", snr, isinstance(snr, (int, float)) and snr > 0 and snr == snr and snr != float("inf"),
               "a number > 0", "score_sde uses 0.16 (VE) and 0.01 to 0.17 (VP); smaller is closer to exact.")
        self.snr = float(snr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, snr={self.snr}, last={self.last})"

    def step_size(self, run, x, where, score, z):
        raise NotImplementedError

    def step(self, run, x, where, state):
        pred = run.predict(x, where)
        c = run.corruption
        score = c.score(run.points[where].marginal, x, pred.x0_hat)
        z = torch.randn(x.shape, generator=run.generator, device=x.device, dtype=x.dtype)
        e = self.step_size(run, x, where, score, z)
        return x + scale_coefficients(c, score, e) + scale_coefficients(c, z, (2 * e) ** 0.5)


class LangevinCorrector(_Langevin):
    """score_sde's Langevin corrector: e = 2 (snr ||z|| / ||score||)^2 with both norms averaged over the batch, one
    e for all samples (see the module docstring). The step depends on the batch; ``ald`` does not.

    Args:
        steps: Langevin steps after each predictor step (one model call each).
        snr: the target signal-to-noise ratio (> 0).
        last: run only after the last ``last`` predictor steps (``None``: after every step but the last).
    """

    name = "langevin"

    def step_size(self, run, x, where, score, z):
        g, n = score.flatten(1).norm(dim=1).mean(), z.flatten(1).norm(dim=1).mean()
        return float(2 * (self.snr * n / g.clamp_min(torch.finfo(g.dtype).tiny)) ** 2)


class AnnealedLangevin(_Langevin):
    """score_sde's annealed Langevin dynamics: e = 2 (snr s_t)^2 per basis coefficient (see the module docstring).

    Args:
        steps: Langevin steps after each predictor step (one model call each).
        snr: e = 2 (snr s_t)^2 (> 0). A same-time ``refresh`` of amount r is ALD with snr = r / 2 up to O(r^4).
        last: run only after the last ``last`` predictor steps (``None``: after every step but the last).
    """

    name = "ald"

    def step_size(self, run, x, where, score, z):
        s = run.points[where].marginal.s
        return 2 * (self.snr * s) ** 2


class RemaskCorrector(RefreshCorrector):
    """ReMDM remasking as a same-time refresh of the per-position uniforms (see the module docstring).

    Args:
        steps: remasking steps after each predictor step (one model call each).
        schedule: ``rescale`` (sigma = eta tau_t), ``cap`` (sigma = min(eta, tau_t)) or ``confidence`` (``rescale``
            spread over the visible tokens by softmax(-confidence)).
        eta: ReMDM's eta_rescale or eta_cap, in [0, 1].
        last, share: as for ``refresh``.
    """

    name = "remask"

    def __init__(self, steps: Annotated[int, Interval(ge=1)] = 1,
                 schedule: Literal["rescale", "cap", "confidence"] = "rescale", eta: Amount = 0.5,
                 last: Annotated[int, Interval(ge=1)] | None = None, share: bool = False) -> None:
        super().__init__(steps, 0.0, last, share)
        if schedule not in ("rescale", "cap", "confidence"):
            raise ConfigError(f"corrector 'remask': schedule must be one of rescale, cap, confidence; got {schedule!r}. "
                              f"These are ReMDM's remasking schedules.")
        _check(self.name, "eta", eta, isinstance(eta, (int, float)) and 0 <= eta <= 1, "a number in [0, 1]",
               "eta scales (rescale, confidence) or caps (cap) the remasking probability.")
        self.schedule, self.eta = schedule, float(eta)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.steps}, schedule={self.schedule!r}, eta={self.eta}, "
                f"last={self.last}, share={self.share})")

    def missing(self, corruption) -> list[str]:
        out = super().missing(corruption)
        if not callable(getattr(corruption, "tau", None)):
            out.append("a masking schedule tau(t)")
        if self.schedule == "confidence" and getattr(corruption, "mask_id", None) is None:
            out.append("a [MASK] token (mask_id)")
        return out

    def start(self, run):
        if self.schedule != "confidence":
            return None
        x = run.like
        return {"mask_id": run.corruption.mask_id, "prev": x.clone(),
                "psi": torch.ones(x.shape, dtype=torch.float64, device=x.device)}

    def correct(self, run, x, where, pred, state):
        if state is not None:  # record the tokens the predictor step revealed, with their confidence
            self.revealed(x, state["prev"], pred, state)
        return super().correct(run, x, where, pred, state)

    def revealed(self, new, old, pred, state):
        """Record psi = q_theta(token | x) for the positions revealed from ``old`` to ``new`` (confidence only)."""
        if state is None:
            return new
        params = getattr(pred, "params", None)
        if params is not None:
            fresh = (old == state["mask_id"]) & (new != state["mask_id"])
            probs = params.double().softmax(-1)
            p = probs.gather(-1, new.clamp(0, probs.shape[-1] - 1)[..., None])[..., 0]
            state["psi"] = torch.where(fresh, p, state["psi"])
        state["prev"] = new.clone()
        return new

    def amounts(self, run, x, where, pred, state):
        tau = run.corruption.tau(run.points[where].t).to(x.device).double()
        if self.schedule == "cap":  # sigma = min(eta, tau): r = sigma / tau
            return torch.where(tau > 0, (self.eta / tau.clamp_min(1e-300)).clamp(max=1), torch.zeros_like(tau))
        if self.schedule == "rescale":
            return self.eta
        visible = x != state["mask_id"]
        w = torch.where(visible, -state["psi"], torch.full_like(state["psi"], float("-inf"))).softmax(1)
        count = visible.sum(1, keepdim=True).double()
        r = (self.eta * count * w.nan_to_num(0.0)).clamp(max=1)
        return torch.where(visible, r, torch.full_like(r, self.eta))


@udm.hookimpl
def udm_register_correctors(register):
    for corrector in (RefreshCorrector, LangevinCorrector, AnnealedLangevin, RemaskCorrector):
        register(corrector)
