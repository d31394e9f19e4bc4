"""``elbo_deletion``: the ELBO of the deletion chain over all its steps, not only the last one.

Independent deletion keeps token i of x_0 at time t iff u_i >= tau(t) (``udm.plugins.delete``). On a grid
1 = t_K > ... > t_0 = 0 the kept sets are nested; given the set K_t kept at t, each of the D tokens missing
at t is back at s < t independently with probability rho = (tau_t - tau_s) / tau_t. The generative step
p_theta(x_s | x_t) that the bound scores inserts, into each gap g of x_t,

    c_g ~ P_theta(c_g) = sum_C q_theta(C_g = C) Binomial(c_g; C, rho)

tokens (q_theta's count for the gap, binomially thinned: what the gap holds at s if q_theta's count were right),
then their identities from the token head with x_t and the c_g placeholders laid out. A step's term is
(docs/math.md, "Likelihoods")

    E_q[log q(K_s | K_t, x_0) - log p_theta(x_s, alignment | x_t)]
        = -D H(rho) + sum_g E_{c ~ Bin(C_g, rho)}[-log P_theta(c)] + E[-log p_theta(inserted tokens)],

with C_g the true number of x_0's tokens missing from gap g and H the binary entropy; the count expectation is
exact (a sum over c), the inserted tokens are one draw of the forward process. At s = 0 (rho = 1) the term is
the corruption's own one-step NLL (``Delete.nll``), the reconstruction; the prior term is 0 (tau(1) = 1 deletes
everything). Any such chain is a bound on -log p(x_0) of the model it defines; that model thins q_theta's counts
exactly as the ``invert`` sampler does, but draws the inserted tokens with only the inserted placeholders laid
out (the sampler lays out all of q_theta's), so it is the bound of a close relative of the sampler's chain.

Exact-count deletion is not supported: its step size depends on the unknown length of x_0.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch

import udm
from udm.errors import ConfigError
from udm.likelihoods import BatchNll, Context
from udm.likelihoods._elbo_continuous import draw_times

from .delete import Delete

__all__ = ["elbo_deletion", "accepts_deletion", "resolve_deletion", "step_nll"]


def accepts_deletion(corruption: Any) -> bool:
    return isinstance(corruption, Delete) and not corruption.exact_count


def resolve_deletion(ctx: Context, options: dict[str, Any]) -> dict[str, Any]:
    """``steps`` defaults to the time type's T in discrete time, else 100."""
    out = dict(options)
    if out.get("steps") is None:
        out["steps"] = int(getattr(ctx.time_type, "steps", 100))
    return out


def _binomial(n: torch.Tensor, k: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Binomial(k; n, rho) elementwise (0 where k > n), float64."""
    ok = k <= n
    n, k = n.double(), k.double()
    logc = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma((n - k).clamp_min(0) + 1)
    logp = logc + torch.xlogy(k, rho) + torch.xlogy((n - k).clamp_min(0), 1 - rho)
    return torch.where(ok, logp.exp(), torch.zeros_like(logp))


def _entropy(rho: torch.Tensor) -> torch.Tensor:
    return -(torch.xlogy(rho, rho) + torch.xlogy(1 - rho, 1 - rho))


def step_nll(ctx: Context, x0: udm.Sequences, t: torch.Tensor, s: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """One draw of the step t -> s term ``(B,)`` (module docstring); ``t, s (B,)`` float64, s < t."""
    c: Delete = ctx.corruption
    u = c.sample_noise(x0, generator)
    keep_t, keep_s = c.keep_mask(x0, u, t), c.keep_mask(x0, u, s)
    x_t = udm.Sequences.from_mask(x0.tokens, keep_t, x0.pad)
    out = ctx.output(x_t, t, generator)
    tau_t, tau_s = c.tau(t).to(x0.device), c.tau(s).to(x0.device)
    rho = torch.where(tau_t > 0, (tau_t - tau_s) / tau_t.clamp_min(1e-300), torch.ones_like(tau_t)).clamp(0, 1)
    # counts: C_g missing tokens per gap of x_t; E_{c ~ Bin(C_g, rho)} [-log P_theta(c)] in closed form
    missing = x0.mask & ~keep_t
    logits = out.count_logits.double()
    width, top = logits.shape[1] - 1, logits.shape[2] - 1
    gap = (keep_t.long().cumsum(1) - keep_t.long()).clamp(max=width)
    counts = torch.zeros(len(x0), width + 1, dtype=torch.long, device=x0.device).scatter_add(1, gap, missing.long())
    if int(counts.max()) > top:
        raise ConfigError(f"likelihood elbo_deletion: every gap count must be <= the model's largest count {top}; got "
                          f"{int(counts.max())}. Raise the model's max_count (or max_length).")
    vals = torch.arange(top + 1, device=x0.device)
    thin = _binomial(vals[None, :, None], vals[None, None, :], rho[:, None, None])  # (B, C, c)
    p_counts = logits.softmax(-1) @ thin  # (B, gaps, c): P_theta(c) per gap
    law = thin.gather(1, counts[..., None].expand(-1, -1, top + 1))  # (B, gaps, c): Bin(c; C_g, rho)
    nlp = -p_counts.log()
    per_gap = torch.where(law > 0, law * nlp, torch.zeros_like(law)).sum(-1)
    valid = torch.arange(width + 1, device=x0.device)[None] <= x_t.lengths.to(x0.device)[:, None]
    count_nll = (per_gap * valid).sum(1)
    # the tokens inserted at s: x_s laid out with placeholders at them
    new = keep_s & ~keep_t
    layout = udm.Sequences.from_mask(torch.where(new, torch.full_like(x0.tokens, x0.pad), x0.tokens), keep_s, x0.pad)
    holes = udm.Sequences.from_mask(new.long(), keep_s, 0).tokens.bool()
    target = udm.Sequences.from_mask(x0.tokens, keep_s, x0.pad).tokens
    token_nll = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    if bool(holes.any()):
        tok = out.token_logits(layout, holes).double().log_softmax(-1)
        token_nll = -(tok.gather(2, target.clamp(min=0)[..., None])[..., 0] * holes).sum(1)
    return count_nll + token_nll - missing.sum(1).double() * _entropy(rho)


def elbo_deletion(ctx: Context, x0: udm.Sequences, generator: torch.Generator | None, *,
                  steps: Annotated[int, udm.Interval(ge=1)] | None = None,
                  draws: Annotated[int, udm.Interval(ge=1)] = 4) -> BatchNll:
    """The deletion chain's NELBO (module docstring) of sequences ``x0``.

    Args:
        steps: K, the chain's steps on the time type's grid (default: T in discrete time, else 100).
        draws: intermediate steps drawn per example, stratified (the last step is always computed).
    """
    if not isinstance(x0, udm.Sequences):
        raise ConfigError(f"likelihood elbo_deletion: data must be a udm.Sequences batch; got {type(x0).__name__}. "
                          f"Wrap token rows with udm.Sequences.pad_list(...).")
    c, b = ctx.corruption, len(x0)
    grid = ctx.time_type.grid(steps, corruption=c).to(torch.float64).cpu()
    if float(c.tau(grid[:1])[0]) < 1:
        raise ConfigError(f"likelihood elbo_deletion: the chain must start from the empty sequence (tau = 1); got "
                          f"tau = {float(c.tau(grid[:1])[0]):.4g} at t = {float(grid[0]):.4g}.")
    k, dev = grid.numel() - 1, x0.device
    recon = step_nll(ctx, x0, grid[k - 1].expand(b).to(dev), grid[k].expand(b).to(dev), generator)
    diffusion = torch.zeros(b, dtype=torch.float64, device=dev)
    if k > 1:
        u = draw_times(b, draws, "stratified", generator, dev).cpu()
        js = (u * (k - 1)).long().clamp(max=k - 2)
        for r in range(draws):
            j = js[:, r]
            diffusion += step_nll(ctx, x0, grid[j].to(dev), grid[j + 1].to(dev), generator) * ((k - 1) / draws)
    zero = torch.zeros(b, dtype=torch.float64, device=dev)
    return BatchNll(zero, diffusion, recon, x0.lengths.to(torch.float64).to(dev))
