"""The ``replace`` corruption: Su's "edit model" (docs/explanation.md), tokens replaced by *different* tokens.

Tokens ``LongTensor (batch, length)``, ids in [0, V). Noise (:class:`ReplaceNoise`): u ~ U[0, 1]^L (which positions)
and offsets r ~ U{1, ..., V - 1}^L (what they become): a corrupted position l gets (x_0,l + r_l) mod V, always
a different token, so the changed set is recoverable from (x_0, x_t) and the noise posterior is exact:
u_l ~ U[0, tau) on changed positions and U[tau, 1] elsewhere (exact_count: the sorted uniforms dealt lowest-first
to the changed positions), r_l = (x_t,l - x_0,l) mod V where changed, fresh elsewhere.

Replacement probability tau(t) = (V - 1)/V * base(t), base ``linear`` (t) or ``cosine`` (1 - cos(pi t / 2)).
The factor (V - 1)/V makes the prior *exact*: at t = 1 a position keeps x_0,l with probability 1/V and is
otherwise uniform over the other V - 1 tokens, i.e. uniform over all V tokens and independent of x_0, so
``sample_prior`` (uniform tokens) is p(x_1) exactly. With ``exact_count`` (exactly round(tau(t) L) positions
replaced) the count at t = 1 is fixed instead of Binomial(L, (V-1)/V), and the uniform prior is an approximation.

The model cannot see which positions were replaced, so the loss covers every position (plain CE).
``invert`` with x0_hat from a network: positions where x0_hat differs from x_t are the changed set D; each
stays changed (keeps x_t's token) with probability tau_s / tau_t, else takes x0_hat's token.

With ``exact_count`` x_t differs from x_0 in exactly k_t = round(tau(t) L) positions, and ``sample_x0``
predicts x0_hat *constrained to differ from x_t in exactly k_t positions* (the improved sampler of Su's
edit model): with d_l = 1 - q_theta(x_0,l = x_t,l | x_t) the model's probability that position l was
replaced, the set D of k_t positions is drawn so that l is in D with probability pi_l = min(1, c d_l)
(summing to k_t; systematic sampling in a random order), and each position of D takes a token from
q_theta restricted to tokens other than x_t,l. ``invert`` then changes exactly k_t - k_s tokens of x_t,
all inside D, and keeps every token the prediction agreed with. With exact marginals sum_l d_l = k_t, so
pi_l = d_l, and a step that changes one token picks l with probability d_l / k_t and its new token from
p(x_0,l | x_t, x_0,l != x_t,l): exactly the reverse step of the corruption. With the family's ``greedy``,
the k_t positions where the model most confidently disagrees (largest d_l) and their most likely other
token are taken instead (mode-seeking). Drawn independently per position, without the constraint, an
x0_hat differs from x_t in the wrong number of positions: the sampled u still ranks D first, so x_s kept
x_t's token on min(|D|, k_s) positions of D and re-corrupted k_s - |D| others when |D| < k_s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import udm

from ._tokens import (SCHEDULES, categorical_family, check_choice, check_vocab, choose, inclusion_probabilities,
                      posterior_noise, sampling_probs, select, systematic_subset)


@dataclass(eq=False)
class ReplaceNoise:
    """Noise of :class:`ReplaceCorruption`: ``u (B, L)`` float64 in [0, 1], ``r (B, L)`` long in [1, V - 1]."""

    u: torch.Tensor
    r: torch.Tensor

    def __eq__(self, other) -> bool:
        return (isinstance(other, ReplaceNoise) and self.u.shape == other.u.shape
                and bool((self.u == other.u).all()) and bool((self.r == other.r).all()))

    __hash__ = None


class ReplaceCorruption(udm.Corruption):
    """Replace tokens by uniformly drawn different tokens (see the module docstring).

    Args:
        vocab_size: number of tokens V (no extra id is used).
        schedule: ``linear`` | ``cosine`` (of base(t); tau = (V - 1)/V base).
        exact_count: replace exactly round(tau(t) L) tokens instead of each independently with prob. tau(t).
    """

    name = "replace"
    data_kind = "tokens"
    family = "categorical"

    def __init__(self, vocab_size: int, schedule: str = "linear", exact_count: bool = False) -> None:
        check_vocab("corruption replace", vocab_size)
        check_choice("corruption replace", "schedule", schedule, SCHEDULES)
        self.vocab_size, self.schedule_name, self.exact_count = vocab_size, schedule, bool(exact_count)

    def __repr__(self) -> str:
        return (f"ReplaceCorruption(vocab_size={self.vocab_size}, schedule={self.schedule_name!r}, "
                f"exact_count={self.exact_count})")

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """Replacement probability tau(t) = (V - 1)/V base(t) ``(batch,)`` float64."""
        base = SCHEDULES[self.schedule_name](torch.as_tensor(t, dtype=torch.float64))[0]
        return base * ((self.vocab_size - 1) / self.vocab_size)

    def _tau(self, t, x):
        return self.tau(t).to(x.device).expand(x.shape[0])

    # --------------------------------------------------------------- contract
    def sample_noise(self, x0, generator):
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        r = torch.randint(1, self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return ReplaceNoise(u, r)

    def forward(self, x0, eps, t):
        changed = select(eps.u, self._tau(t, x0), self.exact_count)
        return torch.where(changed, (x0 + eps.r) % self.vocab_size, x0)

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        """x_1: uniform tokens ``LongTensor shape`` (exact for the independent variant, see above)."""
        return torch.randint(0, self.vocab_size, tuple(shape), generator=generator, device=device)

    def noise_posterior(self, x_t, x0, t, generator=None):
        changed = x_t != x0
        u = posterior_noise(changed, self._tau(t, x_t), self.exact_count, generator)
        fresh = torch.randint(1, self.vocab_size, x0.shape, generator=generator, device=x0.device)
        return ReplaceNoise(u, torch.where(changed, (x_t - x0) % self.vocab_size, fresh))

    def sample_x0(self, output, x_t, t, generator, *, family: udm.Categorical | None = None) -> torch.Tensor:
        """x0_hat ``(B, L)`` from the logits ``output (B, L, V)``: each position from ``family`` (independent
        variant, as the Denoiser would); with ``exact_count`` conditioned on differing from x_t in exactly
        round(tau(t) L) positions (module docstring). ``family``: a :class:`udm.Categorical` (temperature,
        top_k, top_p, greedy); default plain softmax sampling."""
        family = categorical_family("corruption replace.sample_x0", family)
        if not self.exact_count:
            return family.point(output, generator)
        probs = sampling_probs(family, output)
        k = torch.round(self._tau(t, x_t) * x_t.shape[1]).long()
        disagree = 1 - probs.gather(-1, x_t[..., None])[..., 0]
        if family.greedy:
            where = disagree.argsort(1, descending=True).argsort(1) < k[:, None]
        else:
            where = systematic_subset(inclusion_probabilities(disagree, k), k, generator)
        other = probs.scatter(-1, x_t[..., None], 0.0)
        uniform = torch.ones_like(other).scatter(-1, x_t[..., None], 0.0)  # no mass elsewhere: any other token
        other = torch.where(other.sum(-1, keepdim=True) > 0, other, uniform)
        return torch.where(where, choose(other, generator, family.greedy), x_t)

    def refresh_noise(self, eps, amount, generator):
        """Redraw each (u_l, r_l) with probability ``amount`` (q-invariant)."""
        a = torch.as_tensor(amount, dtype=torch.float64, device=eps.u.device)
        a = a[:, None] if a.ndim else a
        coin = torch.rand(eps.u.shape, generator=generator, device=eps.u.device, dtype=torch.float64) < a
        fresh = self.sample_noise(eps.r, generator)
        return ReplaceNoise(torch.where(coin, fresh.u, eps.u), torch.where(coin, fresh.r, eps.r))


@udm.hookimpl
def udm_register_corruptions(register):
    register(ReplaceCorruption)
