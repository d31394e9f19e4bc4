"""A built-in toy language whose validity is exactly checkable: balanced strings over two bracket types (Dyck-2).

Token ids: ``(`` = 0, ``)`` = 1, ``[`` = 2, ``]`` = 3 (vocabulary 4). :func:`brackets` draws strings *uniformly*
from the language of a given length: the bracket skeleton is a uniform Dyck path (sequential sampling with the
exact number of completions N(r, d) of a walk at depth d with r steps left), and each matched pair gets one of
the two types with probability 1/2 (every skeleton has 2^(L/2) typings). :func:`dyck_valid` is the exact stack
check, and the metric ``bracket_validity`` is the fraction of valid samples, so sample quality is a measured rate.
"""

from __future__ import annotations

import torch

import udm
from udm.errors import ConfigError

OPEN, CLOSE = (0, 2), (1, 3)
CHARS = "()[]"


def _check(where: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {key} must be a non-negative integer; got {value!r}.")


def dyck_valid(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Exact stack check ``BoolTensor (B,)``: row b (its first ``lengths[b]`` tokens) is a balanced string of
    ``()`` / ``[]``. Any other id inside the length (e.g. a leftover ``[MASK]``) makes the row invalid."""
    tokens = tokens.long()
    B, L = tokens.shape
    lengths = torch.full((B,), L, dtype=torch.long, device=tokens.device) if lengths is None else lengths.long()
    stack = torch.zeros(B, L + 1, dtype=torch.long, device=tokens.device)
    depth = torch.zeros(B, dtype=torch.long, device=tokens.device)
    ok = torch.ones(B, dtype=torch.bool, device=tokens.device)
    rows = torch.arange(B, device=tokens.device)
    for i in range(L):
        tok, live = tokens[:, i], i < lengths
        is_open = (tok == 0) | (tok == 2)
        is_close = (tok == 1) | (tok == 3)
        top = stack[rows, (depth - 1).clamp_min(0)]
        matches = (depth > 0) & (top == tok - 1)
        ok &= ~live | is_open | (is_close & matches)
        step_open = live & is_open
        stack[rows[step_open], depth[step_open]] = tok[step_open]
        depth = depth + step_open.long() - (live & is_close & matches).long()
    return ok & (depth == 0)


def _completions(length: int) -> torch.Tensor:
    """N[r, d]: number of Dyck-path completions with r steps left at depth d (float64, (length+1, length+2))."""
    n = torch.zeros(length + 1, length + 2, dtype=torch.float64)
    n[0, 0] = 1
    for r in range(1, length + 1):
        n[r, 1:] += n[r - 1, :-1]  # close: depth d -> d - 1
        n[r, :-1] += n[r - 1, 1:]  # open:  depth d -> d + 1
    return n


def _generate(lengths: torch.Tensor, width: int, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Uniform Dyck-2 strings with the given (even) lengths, padded with ``pad`` to ``width``."""
    B = len(lengths)
    N = _completions(width)
    out = torch.full((B, width), pad, dtype=torch.long)
    stack = torch.zeros(B, width + 1, dtype=torch.long)
    depth = torch.zeros(B, dtype=torch.long)
    rows = torch.arange(B)
    for i in range(width):
        live = i < lengths
        rem = (lengths - i).clamp_min(1)
        p_open = N[rem - 1, (depth + 1).clamp_max(width + 1)] / N[rem, depth]
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        opens = live & (u < p_open)
        closes = live & ~opens
        kind = 2 * torch.randint(0, 2, (B,), generator=generator)
        out[opens, i] = kind[opens]
        stack[rows[opens], depth[opens]] = kind[opens]
        out[closes, i] = stack[rows[closes], depth[closes] - 1] + 1
        depth = depth + opens.long() - closes.long()
    return out


def brackets(n: int = 20000, length: int = 16, variable_length: bool = False, min_length: int = 2,
             seed: int = 0):
    """Balanced two-type bracket strings, uniform over the language of each length.

    Returns ``LongTensor (n, length)`` (``length`` even), or with ``variable_length=True`` a ``udm.Sequences``
    (pad -1) whose lengths are uniform over the even numbers in [min_length, length].
    """
    _check("dataset brackets", n=n, length=length, min_length=min_length)
    if length % 2 or length < 2:
        raise ConfigError(f"dataset brackets: length must be an even integer >= 2; got {length!r}. "
                          f"Balanced strings have even length.")
    g = torch.Generator().manual_seed(int(seed))
    if not variable_length:
        return _generate(torch.full((n,), length, dtype=torch.long), length, g, pad=-1)
    if min_length % 2 or not 0 <= min_length <= length:
        raise ConfigError(f"dataset brackets: min_length must be even and in [0, {length}]; got {min_length!r}.")
    lengths = min_length + 2 * torch.randint(0, (length - min_length) // 2 + 1, (n,), generator=g)
    return udm.Sequences(_generate(lengths, length, g, pad=-1), lengths)


def bracket_validity(samples, reference=None, **kwargs) -> float:
    """Fraction of valid balanced strings in ``samples``: ``LongTensor (B, L)`` or ``udm.Sequences``."""
    if isinstance(samples, udm.Sequences):
        return float(dyck_valid(samples.tokens, samples.lengths).double().mean())
    return float(dyck_valid(samples).double().mean())


def decode(tokens: torch.Tensor) -> list[str]:
    """Rows of ids -> strings (ids outside the vocabulary print as ``_``)."""
    return ["".join(CHARS[v] if 0 <= v < 4 else "_" for v in row.tolist()) for row in tokens]


@udm.hookimpl
def udm_register_datasets(register):
    register(brackets)


@udm.hookimpl
def udm_register_metrics(register):
    register(bracket_validity)
