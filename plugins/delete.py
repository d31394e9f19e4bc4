"""The ``delete`` corruption: a length-changing forward process whose reverse process inserts tokens.

Forward (docs/explanation.md). Noise eps = u ~ U[0, 1) per token; with the deletion schedule tau(t)
(tau(0) = 0, tau(1) = 1)

    F_t(x_0, u) = (x_0[i] for i in order if u_i >= tau(t)),     x_1 = the empty sequence,

so |x_t| ~ Binomial(n, 1 - tau(t)) and x_t is a uniformly chosen subsequence of that length. The
exact-count variant (``exact_count=True``, for discrete time) deletes the round(tau(t) n) tokens with
the lowest u instead, so |x_t| = n - round(tau(t) n) exactly.

q_theta(x_0 | x_t) (the insertion model, e.g. the built-in ``insertion`` network) is *structured*: for
each of the |x_t| + 1 gaps a distribution over how many tokens were deleted there, then the identities
of the inserted tokens given those counts. The network's output must offer

    output.count_logits                 (batch, W + 1, K + 1) logits of counts 0..K per gap (W = x_t width)
    output.token_logits(x, holes)       (batch, L, vocab) logits; ``x`` is x_t with placeholders inserted
                                        (``udm.Sequences``, holes hold ``pad``), ``holes`` bool (batch, L)
    output.max_length (optional)        the longest x0_hat the network can read back

and the corruption supplies the two capabilities that structured q_theta need:

* ``nll``: the exact -log q_theta(x_0, alignment | x_t) under the alignment known from the noise,
  = - sum_gaps log q(c_g) - sum_deleted log q(x_0[i] | x_t, c)   (count CE + token CE, summed).
  It is the training loss and one step's term of the likelihood; the ELBO of the whole deletion chain (every
  step, not only this one) is the ``elbo_deletion`` estimator (``udm.likelihood``, docs/math.md "Likelihoods").
* ``sample_x0``: counts, then tokens at the placeholders; x_t is a subsequence of the result by
  construction, and the result (:class:`Aligned`) carries which of its positions are x_t's tokens.

Noise posterior (``invert``). Given x0_hat and the alignment of x_t inside it (the one carried by
:class:`Aligned`, else one drawn uniformly among all embeddings of x_t in x0_hat -- exactly
p(alignment | x_t, x_0), since every kept set of a given size is equally likely), kept tokens get
u ~ U[tau(t), 1) and the others u ~ U[0, tau(t)). F_s then re-inserts each missing token
independently with probability (tau(t) - tau(s)) / tau(t). For ``exact_count`` the posterior draws n
sorted uniforms and gives the lowest n - |x_t| to the deleted tokens (in random order).

A reverse ``invert`` step never removes a token of x_t. With ``exact_count`` that needs care: an x0_hat
with fewer insertions than x_t's count requires (n - |x_t| < round(tau(t) n)) is explained by no noise,
and F_s would delete round(tau(s) n) > n - |x_t| tokens, some of them x_t's. The posterior then gives
x_t's tokens u = 1, which q never draws (u ~ U[0, 1)) and which ``keep_mask`` never deletes, so x_s keeps
all of x_t and re-inserts n - round(tau(s) n) - |x_t| of x0_hat's extra tokens when that is positive
(none otherwise: x_s = x_t, and the next prediction tries again).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import udm
from udm.errors import ConfigError, did_you_mean

from ._tokens import SCHEDULES, categorical_family, choose, redraw, sampling_probs



@dataclass(frozen=True, eq=False)
class Aligned(udm.Sequences):
    """A :class:`udm.Sequences` x0_hat built by inserting into x_t, with ``kept`` (bool ``(batch, L)``):
    True at the positions that hold x_t's tokens (the alignment the noise posterior needs)."""

    kept: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kept is None or self.kept.shape != self.tokens.shape or self.kept.dtype != torch.bool:
            got = None if self.kept is None else f"{self.kept.dtype} {tuple(self.kept.shape)}"
            raise ConfigError(f"Aligned: kept must be a bool tensor shaped like tokens {tuple(self.tokens.shape)}; "
                              f"got {got}. Pass the positions of x_t's tokens inside x0_hat.")


def _time(t: torch.Tensor, x) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(len(x))


class Delete(udm.Corruption):
    """Random deletion x_t = F_t(x_0, u) (module docstring).

    Args:
        schedule: tau(t), the expected deleted fraction: ``linear`` (tau = t) or ``cosine``
            (tau = 1 - cos(pi t / 2), slower at the start).
        exact_count: delete exactly round(tau(t) n) tokens (the lowest u) instead of each token with
            probability tau(t); meant for discrete time.
    """

    name = "delete"
    data_kind = "sequences"
    family = "categorical"

    def __init__(self, schedule: str = "linear", exact_count: bool = False) -> None:
        if schedule not in SCHEDULES:
            raise ConfigError(f"corruption delete: schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}."
                              f"{did_you_mean(str(schedule), SCHEDULES)}")
        self.schedule_name, self.exact_count = schedule, bool(exact_count)
        self._tau = lambda t: SCHEDULES[schedule](t)[0]

    def __repr__(self) -> str:
        return f"Delete(schedule={self.schedule_name!r}, exact_count={self.exact_count})"

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """The deleted fraction tau(t), float64, same shape as ``t``."""
        return self._tau(torch.as_tensor(t, dtype=torch.float64)).clamp(0, 1)

    # --------------------------------------------------------------- forward
    def _check(self, x, where: str, what: str = "x_0") -> None:
        if not isinstance(x, udm.Sequences):
            raise ConfigError(f"corruption delete.{where}: {what} must be a udm.Sequences batch; got "
                              f"{type(x).__name__}. Wrap token rows with udm.Sequences.pad_list(...).")

    def sample_noise(self, x0, generator):
        """u ~ U[0, 1), float64 ``(batch, max_length)`` (entries at padding are ignored)."""
        self._check(x0, "sample_noise")
        return torch.rand(x0.tokens.shape, generator=generator, dtype=torch.float64, device=x0.device)

    def keep_mask(self, x0, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Bool ``(batch, max_length)``: the positions of x_0 that survive to x_t (u >= 1 always survives;
        q never draws it, the exact-count noise posterior uses it, see the module docstring)."""
        tau = self.tau(_time(t, x0))[:, None]
        real = x0.mask
        if not self.exact_count:
            return real & (eps >= tau)
        u = torch.where(real, eps, torch.full_like(eps, 2.0))  # padding never among the lowest
        rank = u.argsort(1).argsort(1)
        k = torch.round(tau[:, 0] * x0.lengths.to(torch.float64)).long()
        return real & ((rank >= k[:, None]) | (eps >= 1))

    def forward(self, x0, eps, t):
        """x_t: the tokens of x_0 kept by :meth:`keep_mask`, in order (``udm.Sequences``)."""
        self._check(x0, "forward")
        return udm.Sequences.from_mask(x0.tokens, self.keep_mask(x0, eps, t), x0.pad)

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        """x_1: ``shape[0]`` empty sequences."""
        b = int(shape[0])
        return udm.Sequences(torch.zeros((b, 0), dtype=torch.long, device=device),
                             torch.zeros(b, dtype=torch.long, device=device))

    # ----------------------------------------------------- noise posterior
    def alignment(self, x_t, x0, generator) -> torch.Tensor:
        """Bool ``(batch, L0)``: which positions of x0 hold x_t's tokens. Taken from :class:`Aligned`
        when it matches x_t's lengths; else drawn uniformly over all embeddings of x_t in x0 (counted by
        the dynamic programme N[i, j] = N[i+1, j] + [x0_i = xt_j] N[i+1, j+1], then sampled forward)."""
        kept = getattr(x0, "kept", None)
        if kept is not None and bool((kept.sum(1) == x_t.lengths.to(kept.device)).all()):
            return kept
        a, b = x0.tokens, x_t.tokens.to(x0.device)
        n, m = a.shape[1], b.shape[1]
        jj = torch.arange(m + 1, device=a.device)
        eq = torch.zeros(len(x0), n, m + 1, dtype=torch.bool, device=a.device)
        eq[:, :, :m] = (a[:, :, None] == b[:, None, :]) & x0.mask[:, :, None] & x_t.mask.to(a.device)[:, None, :]
        counts = torch.empty(len(x0), n + 1, m + 2, dtype=torch.float64, device=a.device)
        counts[:, :, m + 1] = 0
        counts[:, n, : m + 1] = (jj[None] >= x_t.lengths.to(a.device)[:, None]).double()
        for i in range(n - 1, -1, -1):
            counts[:, i, : m + 1] = counts[:, i + 1, : m + 1] + eq[:, i] * counts[:, i + 1, 1: m + 2]
        bad = counts[:, 0, 0] == 0
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ConfigError(f"corruption delete.noise_posterior: x_t must be a subsequence of x0_hat; got row {row} "
                              f"x_t={x_t[row].tolist()[0]} x0_hat={x0[row].tolist()[0]}. Predict x0_hat by inserting "
                              f"into x_t (sample_x0 does).")
        j = torch.zeros(len(x0), dtype=torch.long, device=a.device)
        rows = torch.arange(len(x0), device=a.device)
        r = torch.rand(len(x0), n, generator=generator, dtype=torch.float64, device=a.device)
        kept = torch.zeros_like(x0.tokens, dtype=torch.bool)
        for i in range(n):
            here, after = counts[rows, i, j], counts[rows, i + 1, j + 1]
            match = eq[rows, i, j] & (r[:, i] * here < after)
            kept[:, i] = match
            j = j + match.long()
        return kept

    def noise_posterior(self, x_t, x0, t, generator):
        """u_hat ~ p(u | x_t, x_0): kept tokens U[tau(t), 1), deleted U[0, tau(t)) (``exact_count``: the
        deleted ones get the lowest of n sorted uniforms)."""
        self._check(x0, "noise_posterior", "x0_hat")
        kept = self.alignment(x_t, x0, generator)
        shape, dev = x0.tokens.shape, x0.device
        if self.exact_count:
            real = x0.mask
            values = torch.rand(shape, generator=generator, dtype=torch.float64, device=dev)
            values = torch.where(real, values, torch.full_like(values, 2.0)).sort(1).values
            keys = torch.rand(shape, generator=generator, dtype=torch.float64, device=dev) + 2 * kept + 4 * ~real
            u = torch.empty_like(values).scatter(1, keys.argsort(1), values)
            k_t = torch.round(self.tau(_time(t, x0)) * x0.lengths.to(torch.float64)).long()
            short = (x0.lengths - x_t.lengths.to(dev)) < k_t  # too few insertions: no noise explains x_t
            return torch.where(short[:, None] & kept, torch.ones_like(u), u)  # u = 1: x_t's tokens stay
        tau = self.tau(_time(t, x0))[:, None]
        r = torch.rand(shape, generator=generator, dtype=torch.float64, device=dev)
        below = torch.minimum(tau * r, torch.nextafter(tau, torch.zeros_like(tau)))
        return torch.where(kept, tau + (1 - tau) * r, below)

    def refresh_noise(self, eps, amount, generator):
        """q-invariant kernel on iid uniforms: each u is redrawn with probability ``amount``."""
        return redraw(eps, amount, generator)

    # -------------------------------------------------- structured q_theta
    @staticmethod
    def _check_output(output, where: str) -> None:
        if not (hasattr(output, "count_logits") and callable(getattr(output, "token_logits", None))):
            raise ConfigError(f"corruption delete.{where}: the network output must offer count_logits and "
                              f"token_logits(x, holes); got {type(output).__name__}. Use the 'insertion' model or "
                              f"follow the protocol in udm.plugins.delete's docstring.")

    def nll(self, output, x0, eps, x_t, t) -> torch.Tensor:
        """Exact -log q_theta(x_0, alignment | x_t) ``(batch,)`` = count CE over the |x_t| + 1 gaps +
        token CE over the deleted positions (sums, not means)."""
        self._check_output(output, "nll")
        keep = self.keep_mask(x0, eps, t)
        holes = x0.mask & ~keep
        logits = output.count_logits.double()
        width, top = logits.shape[1] - 1, logits.shape[2] - 1
        gap = (keep.long().cumsum(1) - keep.long()).clamp(max=width)  # kept tokens before each position
        counts = torch.zeros(len(x0), width + 1, dtype=torch.long, device=x0.device).scatter_add(1, gap, holes.long())
        if int(counts.max()) > top:
            raise ConfigError(f"corruption delete.nll: every gap count must be <= the model's largest count {top}; "
                              f"got {int(counts.max())}. Raise the model's max_count (or max_length).")
        valid = torch.arange(width + 1, device=x0.device)[None] <= x_t.lengths.to(x0.device)[:, None]
        count_nll = -(logits.log_softmax(-1).gather(2, counts[..., None])[..., 0] * valid).sum(1)
        masked = udm.Sequences(torch.where(holes, torch.full_like(x0.tokens, x0.pad), x0.tokens), x0.lengths, x0.pad)
        tok = output.token_logits(masked, holes).double().log_softmax(-1)
        token_nll = -(tok.gather(2, x0.tokens.clamp(min=0)[..., None])[..., 0] * holes).sum(1)
        return count_nll + token_nll

    def sample_x0(self, output, x_t, t, generator, *, family: udm.Categorical | None = None) -> Aligned:
        """x0_hat ~ q_theta(x_0 | x_t): counts per gap (left to right, capped so the total stays within
        ``output.max_length`` when given), then tokens at the inserted placeholders.

        ``family`` (a :class:`udm.Categorical`, as the Denoiser's ``family_options`` build it) shapes both
        draws: counts and tokens come from softmax(logits / temperature) truncated by top_k / top_p, or
        are the most likely allowed values with ``greedy``. Default: plain softmax sampling."""
        self._check_output(output, "sample_x0")
        family = categorical_family("corruption delete.sample_x0", family)
        probs = sampling_probs(family, output.count_logits)
        dev, b = probs.device, len(x_t)
        width, top = probs.shape[1] - 1, probs.shape[2] - 1
        cap = getattr(output, "max_length", None)
        total = cap if cap is not None else top * (width + 1)
        left = torch.full((b,), total, device=dev) - x_t.lengths.to(dev)
        vals = torch.arange(top + 1, device=dev)
        counts = torch.zeros(b, width + 1, dtype=torch.long, device=dev)
        for g in range(width + 1):
            p = probs[:, g] * (vals[None] <= left[:, None].clamp(min=0))
            p = torch.where((g <= x_t.lengths.to(dev))[:, None], p, (vals[None] == 0).double())
            p = torch.where(p.sum(1, keepdim=True) > 0, p, (vals[None] == 0).double())
            counts[:, g] = choose(p, generator, family.greedy)
            left = left - counts[:, g]
        x = self.insert_placeholders(x_t.to(dev), counts)
        holes = x.mask & ~x.kept
        tok = sampling_probs(family, output.token_logits(x, holes))
        draws = choose(tok, generator, family.greedy)
        return Aligned(torch.where(holes, draws, x.tokens), x.lengths, x.pad, x.kept)

    @staticmethod
    def insert_placeholders(x_t, counts: torch.Tensor) -> Aligned:
        """x_t with ``counts[:, g]`` placeholders (``pad``) before token g (g = |x_t|: at the end).

        ``counts``: LongTensor ``(batch, W + 1)``. Returns :class:`Aligned` with ``kept`` at x_t's tokens.
        """
        w = x_t.tokens.shape[1]
        before = counts.cumsum(1)[:, :w]  # placeholders before token j
        pos = torch.arange(w, device=counts.device)[None] + before
        lengths = x_t.lengths + counts.sum(1)
        out_w = int(lengths.max()) if len(x_t) else 0
        real = x_t.mask
        pos = torch.where(real, pos, torch.full_like(pos, out_w))  # padding -> a dump column
        tokens = torch.full((len(x_t), out_w + 1), x_t.pad, dtype=torch.long, device=counts.device)
        tokens.scatter_(1, pos, torch.where(real, x_t.tokens, torch.full_like(x_t.tokens, x_t.pad)))
        kept = torch.zeros_like(tokens, dtype=torch.bool).scatter_(1, pos, real)
        return Aligned(tokens[:, :out_w].contiguous(), lengths, x_t.pad, kept[:, :out_w].contiguous())


@udm.hookimpl
def udm_register_corruptions(register):
    register(Delete)
