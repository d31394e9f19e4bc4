"""The ``delete`` corruption: forward semantics, exact marginals of every sampler with the oracle
x0_hat = x_0 (lengths Binomial(n, 1 - tau(s)), uniformly chosen subsequences, repeated tokens), the
exact NLL on a hand-computed case, and its errors."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.plugins.delete import Aligned, Delete
from udm.testing import FixedDenoiser

ALPHA = 1e-3


def chi2_passes(observed: Counter, law: dict, n: int, alpha: float = ALPHA) -> tuple[bool, float, float]:
    """Pearson chi-square goodness of fit, cells with expected count < 5 pooled into one; critical value
    from the Wilson-Hilferty approximation of the chi-square quantile (accurate to <1% for df >= 3)."""
    assert set(observed) <= set(law), f"impossible outcomes {set(observed) - set(law)}"
    stat, pooled_o, pooled_e, cells = 0.0, 0, 0.0, 0
    for key, p in law.items():
        e, o = n * p, observed.get(key, 0)
        if e < 5:
            pooled_o, pooled_e = pooled_o + o, pooled_e + e
            continue
        stat, cells = stat + (o - e) ** 2 / e, cells + 1
    if pooled_e > 0:
        stat, cells = stat + (pooled_o - pooled_e) ** 2 / max(pooled_e, 1e-12), cells + 1
    df = cells - 1
    z = float(torch.special.ndtri(torch.tensor(1 - alpha, dtype=torch.float64)))
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat <= crit, stat, crit


def subsequence_law(x0: list[int], tau: float, exact: bool) -> dict[tuple, float]:
    """p(x_t | x_0) by enumerating kept index sets: Bernoulli(1 - tau) per token, or (exact count) a
    uniform set of size n - round(tau n)."""
    n, law = len(x0), Counter()
    k_del = round(tau * n)
    for keep in itertools.product([0, 1], repeat=n):
        m = sum(keep)
        if exact:
            p = (1 / math.comb(n, n - k_del)) if m == n - k_del else 0.0
        else:
            p = (1 - tau) ** m * tau ** (n - m)
        law[tuple(x for x, k in zip(x0, keep) if k)] += p
    return {k: v for k, v in law.items() if v > 0}


def repeat(x0: udm.Sequences, n: int) -> udm.Sequences:
    return x0[torch.zeros(n, dtype=torch.long)]


def t_(v, n):
    return torch.full((n,), v, dtype=torch.float64)


# ------------------------------------------------------------------ forward
def test_forward_keeps_in_order_the_tokens_with_u_at_least_tau():
    x0 = udm.Sequences.pad_list([[5, 6, 7, 8], [9]])
    u = torch.tensor([[0.1, 0.6, 0.4, 0.9], [0.3, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert Delete().forward(x0, u, t_(0.5, 2)).tolist() == [[6, 8], []]
    # cosine: tau(0.5) = 1 - cos(pi / 4) = 0.2929 -> 0.4 survives, 0.3 survives too
    assert Delete("cosine").forward(x0, u, t_(0.5, 2)).tolist() == [[6, 7, 8], [9]]
    # exact count: delete round(tau n) lowest-u tokens
    ex = Delete(exact_count=True)
    assert ex.forward(x0, u, t_(0.5, 2)).tolist() == [[6, 8], [9]]  # round(0.5) = 0 for n = 1
    assert ex.forward(x0, u, t_(0.75, 2)).tolist() == [[8], []]
    for c in (Delete(), ex):
        g = torch.Generator().manual_seed(0)
        eps = c.sample_noise(x0, g)
        assert c.forward(x0, eps, t_(0.0, 2)) == x0
        assert c.forward(x0, eps, t_(1.0, 2)).tolist() == [[], []]
        prior = c.sample_prior((3,), g)
        assert prior.tolist() == [[], [], []]


def test_forward_lengths_are_binomial():
    n, N, t = 8, 4000, 0.6
    x0 = repeat(udm.Sequences.pad_list([list(range(n))]), N)
    c = Delete()
    g = torch.Generator().manual_seed(1)
    lengths = c.forward(x0, c.sample_noise(x0, g), t_(t, N)).lengths.tolist()
    law = {m: math.comb(n, m) * (1 - t) ** m * t ** (n - m) for m in range(n + 1)}
    ok, stat, crit = chi2_passes(Counter(lengths), law, N)
    assert ok, (stat, crit)


# --------------------------------------------- marginals with the oracle x0_hat = x_0
def _run(sampler, c, x0_row, times, N, seed, **opt):
    x0 = repeat(udm.Sequences.pad_list([x0_row]), N)
    g = torch.Generator().manual_seed(seed)
    x_t = c.forward(x0, c.sample_noise(x0, g), t_(times[0], N))
    return sampler(FixedDenoiser(x0), c, torch.tensor(times, dtype=torch.float64), x_t, generator=g, **opt)


@pytest.mark.parametrize("rule, opts", [("invert", {}), ("refresh", {"amount": 0.5}), ("renoise", {})])
def test_oracle_samplers_give_binomial_lengths_and_uniform_subsets(rule, opts):
    """Distinct tokens: each of the 2^6 kept subsets must appear with (1 - tau(s))^k tau(s)^(n - k);
    tau(s) = 0.5 makes all 64 equally likely, which also makes |x_s| ~ Binomial(6, 0.5)."""
    N, x0 = 4000, [0, 1, 2, 3, 4, 5]
    fn = getattr(udm.samplers, rule)
    out = _run(fn, Delete(), x0, [0.8, 0.65, 0.5], N, seed=2, **opts)
    ok, stat, crit = chi2_passes(Counter(map(tuple, out.tolist())), subsequence_law(x0, 0.5, False), N)
    assert ok, (stat, crit)
    lengths = Counter(out.lengths.tolist())
    ok, stat, crit = chi2_passes(lengths, {m: math.comb(6, m) / 64 for m in range(7)}, N)
    assert ok, (stat, crit)


@pytest.mark.parametrize("exact", [False, True])
def test_invert_with_repeated_tokens_matches_the_exact_law(exact):
    """Repeated tokens make the alignment ambiguous: the noise posterior must draw it uniformly over all
    embeddings, otherwise the law of x_s (enumerated over the 2^8 kept sets) is off."""
    N, x0 = 4000, [0, 0, 1, 0, 1, 1, 0, 0]
    c = Delete(exact_count=exact)
    times = [0.875, 0.625, 0.375] if exact else [0.85, 0.55, 0.3]
    out = _run(udm.samplers.invert, c, x0, times, N, seed=3)
    law = subsequence_law(x0, c.tau(torch.tensor(times[-1])).item(), exact)
    ok, stat, crit = chi2_passes(Counter(map(tuple, out.tolist())), law, N)
    assert ok, (stat, crit)


def test_invert_reinserts_each_missing_token_with_probability_tau_ratio():
    """Aligned x0_hat: the carried alignment is used; each missing token comes back independently with
    probability (tau(t) - tau(s)) / tau(t) = (0.8 - 0.2) / 0.8 = 0.75."""
    N = 8000
    x0 = Aligned(torch.tensor([[7, 1, 8, 9]]), torch.tensor([4]), -1,
                 torch.tensor([[False, True, False, True]]))[torch.zeros(N, dtype=torch.long)]
    x0 = Aligned(x0.tokens, x0.lengths, -1, torch.tensor([[False, True, False, True]]).expand(N, 4).clone())
    x_t = udm.Sequences.pad_list([[1, 9]] * N)
    c, g = Delete(), torch.Generator().manual_seed(4)
    assert torch.equal(c.alignment(x_t, x0, g), x0.kept)
    x_s = c.forward(x0, c.noise_posterior(x_t, x0, t_(0.8, N), g), t_(0.2, N))
    p = 0.75
    law = {(7, 1, 8, 9): p * p, (7, 1, 9): p * (1 - p), (1, 8, 9): (1 - p) * p, (1, 9): (1 - p) ** 2}
    ok, stat, crit = chi2_passes(Counter(map(tuple, x_s.tolist())), law, N)
    assert ok, (stat, crit)


def _features(x, x0, generator):
    """Length, the first four tokens (-1 past the end) and the number of 0s."""
    tok = x.tokens
    first = torch.full((len(x), 4), -1, dtype=torch.long)
    w = min(4, tok.shape[1])
    first[:, :w] = torch.where(x.mask[:, :w], tok[:, :w], first[:, :w])
    zeros = ((tok == 0) & x.mask).sum(1, keepdim=True)
    return torch.cat([x.lengths[:, None], first, zeros], 1).double()


@pytest.mark.parametrize("exact", [False, True])
def test_conformance_suite(exact, reg):
    x0 = udm.Sequences.pad_list([[0, 2, 0, 1, 3, 0, 1, 2, 2, 0], [1, 2]])
    time_type = reg.create("time", "discrete", steps=10) if exact else None
    report = udm.testing.assert_conforms(Delete(exact_count=exact), x0, registry=reg, time_type=time_type,
                                         n=3000, repeat=repeat, features=_features)
    checked = {r.name for r in report.results}
    assert {"marginal[invert]", "marginal[renoise]", "marginal[refresh]", "noise_posterior_explains_x_t"} <= checked


# ------------------------------------------------------------------ the loss
class _FixedOutput:
    """A network output with given logits; records what the token pass was shown."""

    def __init__(self, count_logits, token_logits):
        self.count_logits, self._tok, self.seen = count_logits, token_logits, None

    def token_logits(self, x, holes):
        self.seen = (x, holes)
        return self._tok


def test_nll_equals_the_hand_computed_negative_log_likelihood():
    """x_0 = [a, b, c] = [0, 1, 2], u = [0.1, 0.9, 0.2], t = 0.5 -> x_t = [b]; one token was deleted in
    each of the two gaps: -log q = -log q_0(1) - log q_1(1) - log q_tok(a | pos 0) - log q_tok(c | pos 2)."""
    c = Delete()
    x0 = udm.Sequences.pad_list([[0, 1, 2]])
    u = torch.tensor([[0.1, 0.9, 0.2]], dtype=torch.float64)
    t = t_(0.5, 1)
    x_t = c.forward(x0, u, t)
    assert x_t.tolist() == [[1]]
    counts = [[0.5, 2.0, -1.0, 0.0], [1.0, 0.0, 0.3, -2.0]]  # K = 3
    tokens = [[2.0, 0.0, -1.0], [0.0, 5.0, 0.0], [0.2, 0.1, 1.5]]
    out = _FixedOutput(torch.tensor([counts], dtype=torch.float64), torch.tensor([tokens], dtype=torch.float64))

    def logp(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    expected = -(logp(counts[0], 1) + logp(counts[1], 1) + logp(tokens[0], 0) + logp(tokens[2], 2))
    got = c.nll(out, x0, u, x_t, t)
    assert got.shape == (1,) and abs(float(got) - expected) < 1e-9
    x_seen, holes = out.seen
    assert holes.tolist() == [[True, False, True]]
    assert x_seen.tokens.tolist() == [[-1, 1, -1]]  # the deleted identities are hidden from the network


def test_nll_ignores_gaps_beyond_the_row_length():
    """A short row in a wide batch: its padded gaps must not enter the count CE."""
    c = Delete()
    x0 = udm.Sequences.pad_list([[0, 1, 2], [4]])
    u = torch.tensor([[0.9, 0.9, 0.9], [0.1, 0.0, 0.0]], dtype=torch.float64)
    x_t = c.forward(x0, u, t_(0.5, 2))
    cl = torch.zeros(2, 4, 3)
    cl[1, 1:, 0] = -50.0  # would be huge if counted
    out = _FixedOutput(cl, torch.zeros(2, 3, 5))
    got = c.nll(out, x0, u, x_t, t_(0.5, 2))
    assert torch.allclose(got, torch.tensor([4 * math.log(3), math.log(3) + math.log(5)], dtype=torch.float64))


def test_diffusion_loss_uses_the_corruption_nll(reg):
    net = reg.create("model", "insertion", vocab_size=4, max_length=6, width=16, depth=1, heads=2)
    c, tt = Delete(), reg.create("time", "continuous")
    x0 = udm.Sequences.pad_list([[0, 1, 2], [3], [1, 1, 1, 1, 1]])
    out = udm.diffusion_loss(net, c, tt, x0, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = tt.sample_train(3, g)
    eps = c.sample_noise(x0, g)
    x_t = c.forward(x0, eps, t)
    assert torch.allclose(out.per_sample, c.nll(net(x_t, tt.encode(t)), x0, eps, x_t, t).detach())


# ------------------------------------------------------------------ errors
def test_errors():
    x0 = udm.Sequences.pad_list([[0, 1, 2]])
    c, g = Delete(), torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match=r"corruption delete: schedule must be one of linear, cosine; got 'cosin'\. Did you mean 'cosine'"):
        Delete("cosin")
    with pytest.raises(ConfigError, match=r"corruption delete.forward: x_0 must be a udm.Sequences batch; got Tensor\. Wrap"):
        c.forward(x0.tokens, torch.zeros(1, 3), t_(0.5, 1))
    with pytest.raises(ConfigError, match=r"delete.noise_posterior: x_t must be a subsequence of x0_hat; got row 0 x_t=\[2, 0\] x0_hat=\[0, 1, 2\]\."):
        c.noise_posterior(udm.Sequences.pad_list([[2, 0]]), x0, t_(0.5, 1), g)
    with pytest.raises(ConfigError, match=r"delete.nll: the network output must offer count_logits and token_logits\(x, holes\); got Tensor\."):
        c.nll(torch.zeros(1), x0, torch.zeros(1, 3, dtype=torch.float64), x0, t_(0.5, 1))
    u = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    out = _FixedOutput(torch.zeros(1, 1, 3), torch.zeros(1, 3, 3))  # counts up to 2 only
    with pytest.raises(ConfigError, match=r"delete.nll: every gap count must be <= the model's largest count 2; got 3\. Raise"):
        c.nll(out, x0, u, c.forward(x0, u, t_(0.9, 1)), t_(0.9, 1))
    with pytest.raises(ConfigError, match=r"Aligned: kept must be a bool tensor shaped like tokens \(1, 3\); got None\."):
        Aligned(x0.tokens, x0.lengths)


# ------------------------------------------------- a reverse step keeps x_t's tokens
def _is_subsequence(short: list, long: list) -> bool:
    it = iter(long)
    return all(tok in it for tok in short)


def test_exact_count_invert_never_deletes_observed_tokens():
    """The issue's case: x_t = [1, 2], x0_hat = [7, 1, 2] with x_t's tokens at positions 1, 2, t = 0.75 -> 0.5.
    round(0.75 * 3) = 2 deletions would be needed to explain x_t but x0_hat has one; round(0.5 * 3) = 2 at s.
    The step used to delete one of x_t's tokens in every row (length 1 in 2000 of 2000); it must keep both."""
    n = 2000
    x0 = Aligned(torch.tensor([[7, 1, 2]]).expand(n, 3).clone(), torch.full((n,), 3), -1,
                 torch.tensor([[False, True, True]]).expand(n, 3).clone())
    x_t = udm.Sequences.pad_list([[1, 2]] * n)
    c, g = Delete(exact_count=True), torch.Generator().manual_seed(0)
    x_s = c.forward(x0, c.noise_posterior(x_t, x0, t_(0.75, n), g), t_(0.5, n))
    assert x_s.tolist() == [[1, 2]] * n  # 3 - 2 = 1 token at s: fewer than |x_t|, so nothing is re-inserted
    # at s = 0.1 round(0.3) = 0 deletions: the extra token 7 comes back in every row
    x_s = c.forward(x0, c.noise_posterior(x_t, x0, t_(0.75, n), g), t_(0.1, n))
    assert x_s.tolist() == [[7, 1, 2]] * n


@pytest.mark.parametrize("exact", [False, True])
def test_invert_with_wrong_predictions_keeps_every_token_of_x_t(exact):
    """Random x_t and random x0_hat built by inserting 0..4 tokens into it (too few, right or too many for the
    exact count): one invert step from t to s < t must return a subsequence of x0_hat containing x_t."""
    g = torch.Generator().manual_seed(1)
    c = Delete(exact_count=exact)
    rows_t, rows_0, kept = [], [], []
    for _ in range(400):
        m = int(torch.randint(0, 6, (1,), generator=g))
        xt = torch.randint(0, 3, (m,), generator=g).tolist()
        extra = int(torch.randint(0, 5, (1,), generator=g))
        pos = sorted(torch.randint(0, m + 1, (extra,), generator=g).tolist())
        row, keep, j = [], [], 0
        for i in range(m + 1):
            while pos and pos[0] == i:
                row.append(9), keep.append(False), pos.pop(0)
            if i < m:
                row.append(xt[i]), keep.append(True)
        rows_t.append(xt), rows_0.append(row), kept.append(keep)
    x_t, x0 = udm.Sequences.pad_list(rows_t), udm.Sequences.pad_list(rows_0)
    k = torch.zeros_like(x0.tokens, dtype=torch.bool)
    for i, keep in enumerate(kept):
        k[i, : len(keep)] = torch.tensor(keep, dtype=torch.bool)
    x0 = Aligned(x0.tokens, x0.lengths, x0.pad, k)
    for t, s in [(0.9, 0.6), (0.75, 0.5), (0.5, 0.1)]:
        out = udm.samplers.invert(FixedDenoiser(x0), c, torch.tensor([t, s]), x_t, generator=g)
        for a, b, full in zip(rows_t, out.tolist(), rows_0):
            assert _is_subsequence(a, b) and _is_subsequence(b, full), (t, s, a, b, full)


# ------------------------------------------------- family options reach the structured q_theta
class _FixedNet(torch.nn.Module):
    """Insertion counts per gap with probabilities [0.3, 0.45, 0.25] (0, 1, 2 tokens), tokens [0.6, 0.3, 0.1]."""

    def forward(self, x_t, enc):
        w = x_t.tokens.shape[1]
        counts = torch.tensor([0.3, 0.45, 0.25], dtype=torch.float64).log().expand(len(x_t), w + 1, 3)
        tokens = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64).log()
        return _Out(counts, tokens)


class _Out:
    def __init__(self, counts, tokens):
        self.count_logits, self._tok = counts, tokens

    def token_logits(self, x, holes):
        return self._tok.expand(*x.tokens.shape, 3)


@pytest.mark.parametrize("options, counts, tokens", [
    ({}, {0: 0.3, 1: 0.45, 2: 0.25}, {0: 0.6, 1: 0.3, 2: 0.1}),
    ({"temperature": 0.02}, {1: 1.0}, {0: 1.0}),  # (0.3 / 0.45)^50 = 2e-9: the mode only
    ({"greedy": True}, {1: 1.0}, {0: 1.0}),
    ({"top_k": 2}, {0: 0.4, 1: 0.6}, {0: 2 / 3, 1: 1 / 3}),
    ({"top_p": 0.5}, {0: 0.4, 1: 0.6}, {0: 1.0}),
])
def test_sample_x0_honours_the_family_options(reg, options, counts, tokens):
    """Denoiser(..., **family_options) reaches delete's structured q_theta: counts and inserted tokens are drawn
    with the family's temperature / top_k / top_p / greedy (they were drawn from the plain softmax whatever
    the options). Frequencies within 5 standard errors of the truncated, renormalised laws."""
    n = 4000
    den = udm.Denoiser(_FixedNet(), Delete(), reg.create("time", "continuous"), **options)
    x_t = udm.Sequences.pad_list([[]] * n)  # one gap per row
    x0 = den(x_t, t_(0.5, n), torch.Generator().manual_seed(0))
    got = Counter(x0.lengths.tolist())
    for k, p in counts.items():
        assert abs(got.get(k, 0) / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (options, got)
    assert set(got) <= set(counts)
    toks = Counter(x0.tokens[x0.mask].tolist())
    m = sum(toks.values())
    for v, p in tokens.items():
        assert abs(toks.get(v, 0) / m - p) <= 5 * math.sqrt(p * (1 - p) / m) + 1e-12, (options, toks)
    assert set(toks) <= set(tokens)


def test_sample_x0_refuses_a_non_categorical_family():
    out = _Out(torch.zeros(1, 1, 3), torch.zeros(3))
    with pytest.raises(ConfigError, match=r"corruption delete.sample_x0: family must be a udm.Categorical \(its "
                                          r"temperature, top_k, top_p, greedy\); got Gaussian\. Sample with"):
        Delete().sample_x0(out, udm.Sequences.pad_list([[]]), t_(0.5, 1), None, family=udm.Gaussian())
