"""Token-noise helpers shared by the built-in token corruptions (``mask``, ``replace``, ``delete``).

Each token gets a uniform u in [0, 1]; a schedule tau(t) (tau(0) = 0, tau(1) = 1) decides which tokens the
noise corrupts. Private to the built-in plugin package (not an entry point).
"""

from __future__ import annotations

import math

import torch

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
    """q-invariant kernel on U[0,1]^L: each u_l is redrawn afresh with probability ``amount``."""
    a = torch.as_tensor(amount, dtype=torch.float64, device=u.device)
    a = a[:, None] if a.ndim else a
    fresh = torch.rand(u.shape, generator=generator, device=u.device, dtype=torch.float64)
    coin = torch.rand(u.shape, generator=generator, device=u.device, dtype=torch.float64)
    return torch.where(coin < a, fresh, u)
