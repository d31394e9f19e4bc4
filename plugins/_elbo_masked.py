"""``elbo_masked``: the ELBO of absorbing (masked) token diffusion, as a bound for both masking kinds.

A reverse step t -> s of the ``mask`` corruption reveals masked positions with q_theta's per-position tokens.
The forward posterior q(x_s | x_t, x_0) reveals each masked position with probability
w = (tau_t - tau_s) / tau_t (independent masking) or a uniform subset of k_t - k_s of the k_t masked positions,
w = (k_t - k_s) / k_t with k = round(tau L) (exact count). Either way its KL to p_theta (the same reveal law,
tokens drawn from q_theta independently) is, in expectation over which positions are revealed (docs/math.md,
"Likelihoods"),

    KL_step = w * sum_{l masked in x_t} -log q_theta(x_0,l | x_t),

and the NELBO of a K-step chain is the sum of the steps (the prior term is 0: tau(1) = 1 masks everything;
the last step, to s = 0, is the reconstruction). This is a bound for any grid. In continuous time:

* independent masking: the steps' sum tends to int_0^1 tau'(t)/tau(t) E[sum_masked CE] dt (MDLM; Sahoo et al.
  2024 eq. 10, Shi et al. 2024 eq. 5);
* exact-count masking: k(t) = round(tau(t) L) passes through every count, one position at a time, so the
  chain is the L-step order-agnostic one: sum_{k=1..L} E_{k masked}[(1/k) sum_masked CE] (Hoogeboom et al. 2022).

The corruption's training loss with ``exact_count`` weights by tau'/tau on the time type's grid instead; that
is this bound only on the grid t = n/L (linear schedule), and below the NLL elsewhere (docs/math.md).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch

import udm
from udm.errors import ConfigError
from udm.likelihoods import BatchNll, Context
from udm.likelihoods._elbo_continuous import draw_times

from .mask import MaskCorruption

__all__ = ["elbo_masked", "accepts_mask", "resolve_masked", "chain_weights", "tau_inverse"]


def accepts_mask(corruption: Any) -> bool:
    return isinstance(corruption, MaskCorruption)


def resolve_masked(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    """``steps`` defaults to the time type's T in discrete time; ``None`` (continuous time) otherwise."""
    out = dict(options)
    if out.get("steps") is None and getattr(ctx.time_type, "steps", None) is not None:
        out["steps"] = int(ctx.time_type.steps)
    return out


def chain_weights(c: MaskCorruption, grid: torch.Tensor, length: int) -> torch.Tensor:
    """w_j ``(K,)`` float64: the fraction of x_t's masked positions the step grid[j] -> grid[j + 1] reveals."""
    tau = c.tau(grid.to(torch.float64))
    if c.exact_count:
        k = torch.round(tau * length)
        kt, ks = k[:-1], k[1:]
        return torch.where(kt > 0, (kt - ks) / kt.clamp_min(1), torch.zeros_like(kt))
    tt, ts = tau[:-1], tau[1:]
    return torch.where(tt > 0, (tt - ts) / tt.clamp_min(1e-300), torch.zeros_like(tt))


def tau_inverse(c: MaskCorruption, p: torch.Tensor) -> torch.Tensor:
    """t with tau(t) = p (float64, by bisection; tau increases from 0 to 1)."""
    lo, hi = torch.zeros_like(p, dtype=torch.float64), torch.ones_like(p, dtype=torch.float64)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = c.tau(mid) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def _masked_ce(ctx: Context, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """sum over x_t's masked positions of -log q_theta(x_0,l | x_t) ``(B,)``."""
    logits = ctx.predict(x_t, t, generator).params
    logp = logits.double().log_softmax(-1).gather(-1, x0[..., None])[..., 0]
    masked = x_t == ctx.corruption.mask_id
    return -torch.where(masked, logp, torch.zeros_like(logp)).sum(1)


def _at(ctx: Context, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    c = ctx.corruption
    x_t = c.forward(x0, c.sample_noise(x0, generator), t)
    return _masked_ce(ctx, x0, x_t, t, generator)


def _chain(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None, steps: int,
           draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(diffusion, reconstruction) of the K-step chain on the time type's grid."""
    c, (b, length) = ctx.corruption, x0.shape
    grid = ctx.time_type.grid(steps, corruption=c).to(torch.float64).cpu()
    if float(c.tau(grid[:1])[0]) < 1:
        raise ConfigError(f"likelihood elbo_masked: the chain must start fully masked (tau = 1); got tau = "
                          f"{float(c.tau(grid[:1])[0]):.4g} at t = {float(grid[0]):.4g}. Use a grid that starts at 1.")
    w = chain_weights(c, grid, length)
    k = w.numel()
    recon = w[-1] * _at(ctx, x0, grid[k - 1].expand(b).to(x0.device), generator)
    active = (w[:-1] > 0).nonzero()[:, 0]  # steps that reveal something (exact count: where round(tau L) changes)
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    if active.numel():
        u = draw_times(b, draws, "stratified", generator, x0.device).cpu()
        pick = active[(u * active.numel()).long().clamp(max=active.numel() - 1)]  # (B, draws), uniform on active
        for r in range(draws):
            j = pick[:, r]
            term = _at(ctx, x0, grid[j].to(x0.device), generator) * w[j].to(x0.device)
            diffusion += term * (active.numel() / draws)
    return diffusion, recon


def _masked_at(ctx: Context, x0: torch.Tensor, k: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None) -> torch.Tensor:
    """sum_masked CE ``(B,)`` with a uniformly drawn set of exactly ``k (B,)`` positions masked, the model at ``t``."""
    rank = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device).argsort(1).argsort(1)
    x_t = torch.where(rank < k[:, None].to(x0.device), torch.full_like(x0, ctx.corruption.mask_id), x0)
    return _masked_ce(ctx, x0, x_t, t.to(x0.device), generator)


def _time_given_count(c: MaskCorruption, k: torch.Tensor, length: int, generator: torch.Generator | None,
                      device: Any) -> torch.Tensor:
    """A time for ``k (B,)`` masked positions: independent masking: tau ~ Beta(k, L - k + 1) (the k-th smallest of L
    uniforms), the law of tau(t) given |M| = k under the bound's measure tau'/tau dt; exact count: tau = k / L."""
    if c.exact_count:
        tau = k.double() / length
    else:
        order = torch.rand((k.shape[0], length), generator=generator, dtype=torch.float64, device=device).sort(1).values
        tau = order.gather(1, (k - 1)[:, None].to(device))[:, 0].cpu()
    return tau_inverse(c, tau.cpu())


def _continuous(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None,
                draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(diffusion, reconstruction) of the continuous-time bound, as a sum over the number k of masked positions.

    For independent masking int_0^1 tau'/tau E_M[sum_{l in M} CE] dt = sum_{k=1..L} (1/k) E[sum CE | |M| = k]
    (the measure of {|M| = k} is int Binomial(k; L, tau) dtau / tau = 1/k), with tau | k ~ Beta(k, L - k + 1): drawing
    k instead of t keeps the estimate's variance finite (1/t weights near t = 0 make it infinite). Exact count
    is the same sum with tau = k / L. The k = 1 term is the reconstruction."""
    c, (b, length) = ctx.corruption, x0.shape
    one = torch.ones(b, dtype=torch.long)
    recon = _masked_at(ctx, x0, one, _time_given_count(c, one, length, generator, x0.device), generator)
    diffusion = torch.zeros(b, dtype=torch.float64, device=x0.device)
    if length > 1:
        u = draw_times(b, draws, "stratified", generator, x0.device).cpu()
        for r in range(draws):
            k = 2 + (u[:, r] * (length - 1)).long().clamp(max=length - 2)
            t = _time_given_count(c, k, length, generator, x0.device)
            diffusion += _masked_at(ctx, x0, k, t, generator) / k.double().to(x0.device) * ((length - 1) / draws)
    return diffusion, recon


def elbo_masked(ctx: Context, x0: torch.Tensor, generator: torch.Generator | None, *,
                steps: Annotated[int, udm.Interval(ge=1)] | None = None,
                draws: Annotated[int, udm.Interval(ge=1)] = 4) -> BatchNll:
    """The masked-diffusion NELBO (module docstring) of tokens ``x0 (B, L)``.

    Args:
        steps: the chain's steps on the time type's grid (default: T of a discrete time type); ``None`` in
            continuous time: the continuous-time bound.
        draws: steps (or times) drawn per example, stratified (model calls per example: draws, + 1 for a chain's
            last step).
    """
    if not isinstance(x0, torch.Tensor) or x0.dtype != torch.long or x0.ndim != 2:
        raise ConfigError(f"likelihood elbo_masked: data must be tokens, a LongTensor (n, length); got "
                          f"{type(x0).__name__}. Score a token dataset.")
    b, length = x0.shape
    if steps is None:
        diffusion, recon = _continuous(ctx, x0, generator, draws)
    else:
        diffusion, recon = _chain(ctx, x0, generator, steps, draws)
    zero = torch.zeros(b, dtype=torch.float64, device=x0.device)
    return BatchNll(zero, diffusion, recon, torch.full((b,), float(length), dtype=torch.float64))

