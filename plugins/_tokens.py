"""Token-noise helpers shared by the built-in token corruptions (``mask``, ``replace``, ``delete``).

Each token gets a uniform u in [0, 1]; a schedule tau(t) (tau(0) = 0, tau(1) = 1) decides which tokens the
noise corrupts. Private to the built-in plugin package (not an entry point).
"""

from __future__ import annotations

import dataclasses
import math

import torch

import udm
from udm.errors import ConfigError, did_you_mean


def _linear(t):
    return t, torch.ones_like(t)


def _cosine(t):
    return 1 - torch.cos(t * (math.pi / 2)), (math.pi / 2) * torch.sin(t * (math.pi / 2))


#: name -> t -> (tau(t), tau'(t)), float64
SCHEDULES = {"linear": _linear, "cosine": _cosine}


def check_choice(where: str, key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}; got {value!r}."
                          f"{did_you_mean(str(value), allowed)}")


def check_vocab(where: str, vocab_size) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ConfigError(f"{where}: vocab_size must be an integer >= 2; got {vocab_size!r}. "
                          f"Pass the number of data tokens (ids 0..vocab_size-1).")


def select(u: torch.Tensor, tau: torch.Tensor, exact_count: bool) -> torch.Tensor:
    """Bool ``(B, L)``: the positions the noise u ``(B, L)`` corrupts at level tau ``(B,)``.

    Independent: u < tau. Exact count: the round(tau L) positions with the lowest u.
    """
    if not exact_count:
        return u < tau.to(u.dtype)[:, None]
    k = torch.round(tau.double() * u.shape[1]).long()
    rank = u.argsort(dim=1).argsort(dim=1)
    return rank < k[:, None]


def posterior_noise(chosen: torch.Tensor, tau: torch.Tensor, exact_count: bool,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Sample u ~ q(u | select(u, tau) = chosen) ``(B, L)`` float64 (exact for both variants)."""
    r = torch.rand(chosen.shape, generator=generator, device=chosen.device, dtype=torch.float64)
    if not exact_count:
        tau = tau.double()[:, None]
        return torch.where(chosen, r * tau, tau + r * (1 - tau))
    # order statistics are exchangeable: deal the sorted uniforms, lowest first to the chosen positions
    v = torch.rand(chosen.shape, generator=generator, device=chosen.device, dtype=torch.float64).sort(1).values
    order = ((~chosen).double() + r).argsort(dim=1)
    return torch.empty_like(v).scatter_(1, order, v)


def redraw(u: torch.Tensor, amount, generator: torch.Generator | None) -> torch.Tensor:
    """q-invariant kernel on U[0,1]^L: each u_l is redrawn afresh with probability ``amount`` (a number, ``(B,)``
    or per position ``(B, L)``)."""
    a = torch.as_tensor(amount, dtype=torch.float64, device=u.device)
    a = a[:, None] if a.ndim == 1 else a
    fresh = torch.rand(u.shape, generator=generator, device=u.device, dtype=torch.float64)
    coin = torch.rand(u.shape, generator=generator, device=u.device, dtype=torch.float64)
    return torch.where(coin < a, fresh, u)


def categorical_family(where: str, family) -> udm.Categorical:
    """The categorical family a structured ``sample_x0`` draws with (default: plain softmax sampling)."""
    if family is None:
        return udm.Categorical()
    if not isinstance(family, udm.Categorical):
        raise ConfigError(f"{where}: family must be a udm.Categorical (its temperature, top_k, top_p, greedy); got "
                          f"{type(family).__name__}. Sample with the corruption's own family, categorical.")
    return family


def sampling_probs(family: udm.Categorical, logits: torch.Tensor) -> torch.Tensor:
    """float64 probabilities ``(..., k)`` after the family's temperature and truncations (not its greedy flag,
    which callers apply as :func:`choose`)."""
    return dataclasses.replace(family, greedy=False).probs(logits)


def choose(probs: torch.Tensor, generator, greedy: bool) -> torch.Tensor:
    """One index per row of unnormalised ``probs (..., k)``: the argmax when ``greedy``, else a draw by inverse
    CDF (float64; much faster than ``torch.multinomial`` for many small rows)."""
    if greedy:
        return probs.argmax(-1)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=torch.float64, device=cdf.device)
    return (cdf < u * cdf[..., -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


def inclusion_probabilities(d: torch.Tensor, k: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """pi ``(B, L)`` proportional to ``d (B, L)`` (clamped to >= floor), capped at 1, summing to ``k (B,)``:
    pi_l = min(1, c d_l) with c found by repeatedly fixing the capped positions at 1 and rescaling the rest."""
    d = d.double().clamp(min=floor)
    full = torch.zeros_like(d, dtype=torch.bool)
    pi = d
    for _ in range(d.shape[1] + 1):
        rest = torch.where(full, torch.zeros_like(d), d)
        left = (k.to(d.device) - full.sum(1)).double().clamp(min=0)
        pi = torch.where(full, torch.ones_like(d), rest * (left / rest.sum(1).clamp_min(1e-300))[:, None])
        over = (pi > 1) & ~full
        if not bool(over.any()):
            break
        full = full | over
    return pi.clamp(max=1)


def systematic_subset(pi: torch.Tensor, k: torch.Tensor, generator) -> torch.Tensor:
    """Bool ``(B, L)``: exactly ``k (B,)`` positions, position l chosen with probability ``pi_l`` (``pi`` in
    [0, 1], summing to k per row): systematic sampling in a random order (Madow 1949; Hartley & Rao 1962).
    The positions are shuffled, laid end to end as intervals of lengths pi_l on [0, k], and the ones holding
    the points U, U + 1, ..., U + k - 1 (U ~ U[0, 1)) are taken."""
    b, n = pi.shape
    dev = pi.device
    order = torch.rand(b, n, generator=generator, dtype=torch.float64, device=dev).argsort(1)
    ends = pi.double().gather(1, order).cumsum(1)
    ends = ends * (k.to(dev).double() / ends[:, -1:].squeeze(1).clamp_min(1e-300))[:, None]  # exactly k at the end
    starts = torch.cat([torch.zeros(b, 1, dtype=torch.float64, device=dev), ends[:, :-1]], 1)
    u = torch.rand(b, 1, generator=generator, dtype=torch.float64, device=dev)
    hit = (torch.floor(ends - u) > torch.floor(starts - u)) & (k.to(dev) > 0)[:, None]
    return torch.zeros_like(hit).scatter(1, order, hit)
