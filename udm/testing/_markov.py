"""An exact oracle for token corruptions: sequences from a first-order Markov chain.

p(x) = pi(x_1) prod_{l>1} P(x_{l-1}, x_l) over a vocabulary of V tokens and a fixed length L. Everything a
token-diffusion test needs is exact and cheap:

* :meth:`MarkovChain.probs`: the whole law over all V^L sequences (index base V, first token most significant);
* :meth:`MarkovChain.tv`: the total-variation distance of a sample's empirical law to p (exact over all states);
* :meth:`MarkovChain.marginals`: p(x_0,l = v | evidence) by forward-backward, for per-position evidence
  "x_0,l equals a reference token with weight a, differs from it with weight b", optionally conditioned on the
  exact number of positions that differ (exact-count corruptions). Masking: visible positions have (a, b) =
  (1, 0), masked ones no reference. Replacement with probability tau by a different uniform token:
  (a, b) = (1 - tau, tau / (V - 1)).
* :class:`MarkovOracle`: a denoiser ``(x_t, t, generator) -> x0_hat`` that samples each position
  *independently* from its exact marginal p(x_0,l | x_t), as a non-autoregressive network would (through
  the corruption's ``sample_x0`` when it has one, as :class:`udm.Denoiser` does); with ``joint=True``
  (masking) an exact joint draw of q(x_0 | x_t) (:meth:`MarkovChain.sample_posterior`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..denoiser import Prediction
from ..families import Categorical

__all__ = ["MarkovChain", "MarkovOracle"]


def _shift(x: torch.Tensor) -> torch.Tensor:
    """Move dim 1 (the count of differing positions) up by one: out[:, c] = x[:, c - 1], out[:, 0] = 0."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


@dataclass
class MarkovChain:
    """A first-order Markov chain over ``V`` tokens: ``init (V,)`` and ``trans (V, V)`` (rows sum to 1)."""

    init: torch.Tensor
    trans: torch.Tensor
    length: int

    def __post_init__(self) -> None:
        self.init = torch.as_tensor(self.init, dtype=torch.float64)
        self.trans = torch.as_tensor(self.trans, dtype=torch.float64)

    @classmethod
    def random(cls, vocab: int = 6, length: int = 8, sharpness: float = 2.5, seed: int = 0) -> "MarkovChain":
        """Rows softmax(sharpness * z), z ~ N(0, I) (seeded): larger sharpness gives more dependent chains."""
        g = torch.Generator().manual_seed(seed)
        w = (sharpness * torch.randn(vocab + 1, vocab, generator=g, dtype=torch.float64)).softmax(1)
        return cls(w[0], w[1:], length)

    @property
    def vocab_size(self) -> int:
        return self.init.shape[0]

    # ------------------------------------------------------------------ the law
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n sequences ``LongTensor (n, L)``."""
        x = torch.empty(n, self.length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.init, n, replacement=True, generator=generator)
        for l in range(1, self.length):
            x[:, l] = torch.multinomial(self.trans[x[:, l - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) ``(n,)`` float64 for ``x (n, L)``."""
        x = x.cpu()
        lp = self.init.log()[x[:, 0]]
        return lp + self.trans.log()[x[:, :-1], x[:, 1:]].sum(1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sequence -> index in [0, V^L) (base V, first token most significant)."""
        powers = self.vocab_size ** torch.arange(self.length - 1, -1, -1, dtype=torch.long)
        return (x.cpu().long() * powers).sum(1)

    def probs(self) -> torch.Tensor:
        """p over all V^L sequences ``(V^L,)`` float64, indexed as :meth:`encode` (computed once)."""
        if getattr(self, "_probs", None) is None:
            self._probs = self._all_probs()
        return self._probs

    def _all_probs(self) -> torch.Tensor:
        p, V = self.init.clone(), self.vocab_size
        for _ in range(1, self.length):
            last = torch.arange(p.numel()) % V
            p = (p[:, None] * self.trans[last]).reshape(-1)
        return p

    def tv(self, samples: torch.Tensor, probs: torch.Tensor | None = None) -> float:
        """TV(empirical law of ``samples (n, L)``, p) = 1/2 sum_x |n_x / n - p(x)|, exact over all V^L states.
        Out-of-vocabulary rows (e.g. a leftover MASK) count as mass outside the support."""
        probs = self.probs() if probs is None else probs
        ok = ((samples >= 0) & (samples < self.vocab_size)).all(1).cpu()
        counts = torch.bincount(self.encode(samples[ok]), minlength=probs.numel()).double() / len(samples)
        return float(0.5 * ((counts - probs).abs().sum() + (~ok).double().mean()))

    def tv_floor(self, n: int, seeds: int = 5) -> tuple[float, float]:
        """Mean and standard deviation of the TV of ``n`` true draws (the noise floor), over ``seeds`` seeds."""
        probs = self.probs()
        tvs = torch.tensor([self.tv(self.sample(n, torch.Generator().manual_seed(1000 + k)), probs)
                            for k in range(seeds)])
        return float(tvs.mean()), float(tvs.std())

    # ---------------------------------------------------------------- posterior
    def marginals(self, ref: torch.Tensor, same: torch.Tensor, diff: torch.Tensor,
                  count: torch.Tensor | None = None) -> torch.Tensor:
        """p(x_0,l = v | evidence) ``(B, L, V)`` float64 by forward-backward over (token, #differences).

        Args:
            ref: ``(B, L)`` reference tokens (any value outside [0, V) means "no reference").
            same, diff: ``(B, L)`` likelihood weights of x_0,l == ref_l and x_0,l != ref_l.
            count: ``(B,)`` optional exact number of positions with x_0,l != ref_l to condition on.
        """
        B, L, V = ref.shape[0], self.length, self.vocab_size
        C = L + 1 if count is not None else 1  # track the number of differences only when conditioning on it
        ref, same, diff = ref.cpu(), same.cpu().double(), diff.cpu().double()
        is_diff = torch.arange(V)[None, None] != ref[..., None]  # (B, L, V)
        e = torch.where(is_diff, diff[..., None], same[..., None])  # (B, L, V)

        def place(m: torch.Tensor, l: int) -> torch.Tensor:  # weight by evidence, move count on differences
            m = m * e[:, l, None, :]
            return torch.where(is_diff[:, l, None, :], _shift(m), m) if count is not None else m

        start = torch.zeros(B, C, V, dtype=torch.float64)
        start[:, 0] = self.init
        alpha = [place(start, 0)]
        for l in range(1, L):
            a = alpha[-1] @ self.trans
            alpha.append(place(a / a.sum((1, 2), keepdim=True).clamp_min(1e-300), l))
        beta = [torch.zeros(B, C, V, dtype=torch.float64)]
        beta[0][:, 0] = 1.0
        for l in range(L - 1, 0, -1):
            b = place(beta[0], l) @ self.trans.T
            beta.insert(0, b / b.sum((1, 2), keepdim=True).clamp_min(1e-300))
        if count is not None:
            j = count.cpu().long()[:, None] - torch.arange(C)[None]  # (B, C): pair alpha[c] with beta[k - c]
            pick = j.clamp(0, L)[..., None].expand(B, C, V)
        out = []
        for l in range(L):
            a, b = alpha[l], beta[l]
            m = (a * b).sum(1) if count is None else (a * b.gather(1, pick) * (j >= 0)[..., None]).sum(1)
            out.append(m / m.sum(-1, keepdim=True).clamp_min(1e-300))
        return torch.stack(out, 1)


    def sample_posterior(self, ref: torch.Tensor, same: torch.Tensor, diff: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """A joint draw x_0 ~ p(x_0 | evidence) ``(B, L)`` (evidence as in :meth:`marginals`, without a count) by
        forward filtering, backward sampling: exact, unlike independent draws from the marginals."""
        B, L, V = ref.shape[0], self.length, self.vocab_size
        ref, same, diff = ref.cpu(), same.cpu().double(), diff.cpu().double()
        e = torch.where(torch.arange(V)[None, None] != ref[..., None], diff[..., None], same[..., None])  # (B, L, V)
        alpha = [self.init[None] * e[:, 0]]
        for l in range(1, L):
            a = (alpha[-1] @ self.trans) * e[:, l]
            alpha.append(a / a.sum(1, keepdim=True).clamp_min(1e-300))
        x = torch.empty(B, L, dtype=torch.long)
        for l in range(L - 1, -1, -1):
            w = alpha[l] if l == L - 1 else alpha[l] * self.trans[:, x[:, l + 1]].T
            cdf = w.cumsum(1)
            u = torch.rand(B, 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
            x[:, l] = (cdf < u).sum(1).clamp(max=V - 1)
        return x


class MarkovOracle:
    """Exact per-position posterior marginals p(x_0,l | x_t) of a :class:`MarkovChain` for a token corruption,
    turned into x0_hat like a non-autoregressive network: logits = log marginals, then the corruption's
    ``to_x0`` and the categorical family's sampling (each position independently).

    The corruption is read by duck typing: an absorbing corruption exposes ``mask_id`` (masked positions carry
    no evidence, visible ones are exact); a replacement corruption exposes ``tau(t)`` (the probability that a
    position was replaced by a uniformly drawn *different* token) and ``exact_count`` (exactly round(tau L)
    positions replaced).
    """

    def __init__(self, chain: MarkovChain, corruption: Any, family: Categorical | None = None, *,
                 joint: bool = False) -> None:
        self.chain, self.corruption, self.family, self.joint = chain, corruption, family or Categorical(), joint
        if joint and not hasattr(corruption, "mask_id"):
            raise ValueError(f"MarkovOracle: joint must be False for a corruption without mask_id; got joint=True with "
                             f"{type(corruption).__name__}. Joint posterior draws are implemented for masking.")

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(x_0,l = v | x_t) ``(B, L, V)`` float64 (-inf where impossible)."""
        c, V, L = self.corruption, self.chain.vocab_size, self.chain.length
        ones = torch.ones(x_t.shape, dtype=torch.float64)
        if hasattr(c, "mask_id"):
            visible = (x_t != c.mask_id).cpu().double()
            m = self.chain.marginals(x_t, ones, 1 - visible)
        else:
            tau = c.tau(t).cpu().double().expand(x_t.shape[0])[:, None].expand(x_t.shape)
            if c.exact_count:
                k = torch.round(c.tau(t).cpu().double().expand(x_t.shape[0]) * L).long()
                m = self.chain.marginals(x_t, ones, ones, count=k)
            else:
                m = self.chain.marginals(x_t, 1 - tau, tau / (V - 1))
        return m.log().to(x_t.device)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> Prediction:
        logits = self.logits(x_t, t)
        if self.joint:  # an exact joint draw of q(x_0 | x_t) (forward filtering, backward sampling)
            visible = (x_t != self.corruption.mask_id).cpu().double()
            x0 = self.chain.sample_posterior(x_t, torch.ones_like(visible), 1 - visible, generator)
            return Prediction(x0.to(x_t.device), self.corruption.to_x0(logits, x_t, t))
        sample_x0 = getattr(self.corruption, "sample_x0", None)
        if callable(sample_x0):  # a constrained q_theta (exact-count replacement) draws x0_hat itself
            return Prediction(sample_x0(logits, x_t, t, generator, family=self.family), logits)
        params = self.corruption.to_x0(logits, x_t, t)
        return Prediction(self.family.point(params, generator), params)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.predict(x_t, t, generator).x0_hat
