"""Shared pieces of the linear-Gaussian likelihoods (docs/math.md, "Likelihoods"): q_theta's variance choices,
the reverse step's variance, the decoder p(x_0 | x_t) (a density, or discretised onto the data's levels) and
the prior term. Everything is per coefficient of the corruption's orthonormal basis B and in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..errors import CapabilityError, ConfigError
from ..linear_gaussian import LinearGaussian, Marginal
from ..quantisation import Quantisation

__all__ = ["VarianceChoice", "RUN_VARIANCES", "check_variance", "q_variance", "step_variance", "decoder_nll", "prior_kl",
           "gaussian_nll", "discretised_log_prob", "rows", "flat_sum"]

#: q_theta's variance Sigma_t for a likelihood: ``small`` (0: the reverse step keeps the posterior's variance,
#: DDPM's beta-tilde), ``large`` (the reverse step's variance is the forward step's, DDPM's beta), ``model``
#: (the variance the denoiser's prediction carries, e.g. a network head), or a variance source
#: ``(t (batch,), x_t) -> Sigma`` in the basis (:class:`udm.VarianceTable`, an optimal-variance estimate).
#: a run's own variances by name (``udm fit-variance`` tables, a variance head): resolved where the run is known
RunVariance = Literal["analytic", "residual", "sn", "npr"]
RUN_VARIANCES: tuple[str, ...] = RunVariance.__args__
VarianceChoice = Literal["small", "large", "model"] | RunVariance | Callable[..., Any]


def check_variance(variance: Any, where: str) -> None:
    if variance in ("small", "large", "model") or (callable(variance) and not isinstance(variance, str)):
        return
    if variance in RUN_VARIANCES:
        raise ConfigError(f"{where}: variance {variance!r} (a run's fitted table or variance head) must come with a "
                          f"run directory; got a model. Score the run (udm.likelihood(RUN_DIR, ...), udm eval RUN_DIR) "
                          f"or pass the variance source itself (udm.fit_variance(...).table).")
    raise ConfigError(f"{where}: variance must be 'small', 'large', 'model' or a variance source (t, x_t) -> Sigma "
                      f"such as udm.VarianceTable; got {variance!r}. 'large' is DDPM's beta_t, 'small' its "
                      f"posterior variance.")


def flat_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...)`` -> ``(B,)``."""
    return v.reshape(v.shape[0], -1).sum(1)


def rows(table: Marginal, idx: torch.Tensor, like: torch.Tensor) -> Marginal:
    """The marginal at grid rows ``idx`` ``(B,)`` of a :meth:`~udm.LinearGaussian.grid_table` (one row per example)."""
    idx = idx.cpu()
    pick = [None if v is None else v[idx].to(like.device) for v in (table.a64, table.s64, table.da64, table.ds64)]
    cast = [None if v is None else v.to(like.dtype) for v in pick]
    return Marginal(table.t[idx].to(like.device), cast[0], cast[1], *pick, cast[2], cast[3])


def q_variance(variance: Any, t: torch.Tensor, x_t: torch.Tensor, pred: Any) -> torch.Tensor | None:
    """Sigma_t in the basis (float64, broadcastable against ``(B, *shape)``) for a variance source or ``model``;
    ``None`` for ``small``/``large`` (they set the step variance directly)."""
    if variance in ("small", "large"):
        return None
    if variance == "model":
        if pred.variance is None:
            raise ConfigError("likelihood: variance 'model' must come with a prediction that carries a variance (a "
                              "network with a variance head, udm.Denoiser(variance='head')); got a prediction "
                              "without one. Use 'large', 'small' or a variance source.")
        sigma = pred.variance
    else:
        sigma = variance(t, x_t.to(torch.float64))
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device)
    if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
        raise ConfigError(f"likelihood: the variance source must give finite Sigma_t >= 0; got min "
                          f"{float(sigma.min()):.3g} at t = {float(t.reshape(-1)[0]):.4g}. Clip it into its bounds.")
    return sigma


def _forward_step_variance(mt: Marginal, ms: Marginal) -> torch.Tensor:
    """s_{t|s}^2 = s_t^2 - (a_t / a_s)^2 s_s^2 (the forward step's variance, DDPM's beta), >= 0."""
    a_ts = torch.where(ms.a64 > 0, mt.a64 / torch.where(ms.a64 > 0, ms.a64, torch.ones_like(ms.a64)),
                       torch.zeros_like(mt.a64))
    return (mt.s64 ** 2 - a_ts ** 2 * ms.s64 ** 2).clamp_min(0)


def step_variance(variance: Any, mt: Marginal, ms: Marginal, k0: torch.Tensor, std: torch.Tensor,
                  sigma: torch.Tensor | None) -> torch.Tensor:
    """The variance of p_theta(x_s | x_t) per coefficient: std^2 + k0^2 Sigma_t (docs/math.md, "q_theta with a
    variance"); ``small``: std^2; ``large``: s_{t|s}^2. At s = 0 (the decoder) std = 0 and k0 = 1, so a
    variance source gives Sigma_t itself and ``small``/``large`` both give s_t^2."""
    if sigma is not None:
        return std ** 2 + k0 ** 2 * sigma
    if variance == "large" or bool((ms.s64 == 0).all()):
        return _forward_step_variance(mt, ms)
    return std ** 2


def gaussian_nll(e: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """-log N(e; 0, var) elementwise (nats)."""
    var = var.expand_as(e)
    return 0.5 * (e * e / var + torch.log(2 * math.pi * var))


def _log_bin(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), without cancellation in the tails."""
    flip = lo > 0  # both ends right of 0: use the upper tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log(-torch.expm1(la - lb))


def discretised_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, q: Quantisation) -> torch.Tensor:
    """log P(level of x) elementwise under N(mean, std^2) integrated over the level's bin (width q.step; the
    lowest and highest bins extend to -inf and +inf), Ho et al. 2020 eq. 13."""
    k = q.levels(x).long()
    v = q.values(k, torch.float64).to(mean.device)
    std = std.expand_as(mean).clamp_min(1e-30)
    half = q.step / 2
    lo = torch.where(k == 0, torch.full_like(mean, -math.inf), (v - half - mean) / std)
    hi = torch.where(k == q.bins - 1, torch.full_like(mean, math.inf), (v + half - mean) / std)
    return _log_bin(lo, hi)


def _pixel_variance(c: LinearGaussian, var: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """diag(B^T diag(var) B): each data element's variance under N(0, B^T diag(var) B) ``(n, *shape)``."""
    if c.basis.identity or var.reshape(var.shape[0], -1).shape[1] == 1:
        return var
    d = math.prod(shape)
    eye = torch.eye(d, dtype=torch.float64, device=var.device).reshape(d, *shape)
    cols = c.to_basis(eye).reshape(d, -1) ** 2  # row i: (B e_i)_k^2
    v = var.expand(var.shape[0], *shape).reshape(var.shape[0], -1)
    return (v @ cols.T).reshape(var.shape[0], *shape)


def decoder_nll(c: LinearGaussian, x0: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                quantisation: Quantisation | None) -> torch.Tensor:
    """-log p(x_0 | x_t) ``(B,)`` for the decoder N(mean, B^T diag(var) B): a density, or with ``quantisation``
    the probability of x_0's levels under the per-element marginals (a factorised discretised Gaussian)."""
    if quantisation is None:
        if bool((torch.as_tensor(var) <= 0).any()):
            raise ConfigError("likelihood: the decoder's variance must be > 0 for a density of x_0; got 0 at the "
                              "smallest time (a point mass has no density). Give the variance source a positive "
                              "value there, or use 'large'.")
        return flat_sum(gaussian_nll(c.to_basis(x0 - mean), var))
    std = _pixel_variance(c, var, tuple(x0.shape[1:])).sqrt()
    return -flat_sum(discretised_log_prob(x0, mean, std, quantisation))


def prior_kl(c: LinearGaussian, x0: torch.Tensor, t: float, generator: torch.Generator | None) -> torch.Tensor:
    """KL(q(x_t | x_0) || p(x_1)) ``(B,)`` at the chain's first time t (1 on the built-in grids). With the default
    prior N(0, B^T diag(s(1)^2) B) in closed form, per coefficient
    1/2 [a_t^2 c_0^2 / s_1^2 + s_t^2 / s_1^2 - 1 - log(s_t^2 / s_1^2)]; a corruption with its own ``prior_logp``
    gets the Monte-Carlo estimate E_q[-log p(x_t)] minus q's entropy (one draw)."""
    mt = c.marginal(torch.tensor([t], dtype=torch.float64), x0, derivatives=False)
    own_logp = type(c).prior_logp is not LinearGaussian.prior_logp
    if not own_logp and type(c).sample_prior is not LinearGaussian.sample_prior:
        raise CapabilityError(f"likelihood: corruption {c.name!r} must define prior_logp, the density of its own "
                              f"sample_prior; got the default N(0, s(1)^2) next to its own sample_prior. Add "
                              f"prior_logp(x1) -> (batch,) to the corruption.")
    if not own_logp:
        m1 = c.marginal(torch.ones(1, dtype=torch.float64), x0, derivatives=False)
        c0 = c.to_basis(x0)
        r = (mt.s64 / m1.s64) ** 2
        per = 0.5 * ((mt.a64 * c0) ** 2 / m1.s64 ** 2 + r - 1 - torch.log(r))
        return flat_sum(per.expand_as(c0))
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    entropy = flat_sum((0.5 * torch.log(2 * math.pi * math.e * mt.s64 ** 2)).expand_as(x0))
    return -c.prior_logp(c.apply(mt, x0, eps)).double() - entropy
