"""The bracket language: the exact validity check against a reference recursion, uniform sampling over the
language, variable lengths, the metric and errors."""

import itertools
import math

import pytest
import torch

import udm
from udm.plugins.toylang import brackets, bracket_validity, decode, dyck_valid


def reference_valid(s: str) -> bool:
    stack = []
    for ch in s:
        if ch in "([":
            stack.append(ch)
        elif ch in ")]":
            if not stack or "([".index(stack.pop()) != ")]".index(ch):
                return False
        else:
            return False
    return not stack


def test_dyck_valid_matches_a_stack_machine_exhaustively():
    assert dyck_valid(torch.zeros(3, 0, dtype=torch.long)).all()  # the empty string is balanced
    for n in range(1, 7):
        rows = torch.tensor(list(itertools.product(range(5), repeat=n)))  # id 4: out of vocabulary
        got = dyck_valid(rows)
        want = torch.tensor([reference_valid(s) for s in decode(rows)])
        assert torch.equal(got, want), n
    # 2-type Dyck words of length 6: Catalan(3) * 2^3
    assert int(dyck_valid(torch.tensor(list(itertools.product(range(4), repeat=6)))).sum()) == 5 * 8


def test_lengths_are_respected():
    x = torch.tensor([[0, 1, 0, 0], [2, 3, 9, 9], [0, 0, 1, 1]])
    assert dyck_valid(x, torch.tensor([2, 2, 3])).tolist() == [True, True, False]


def test_brackets_is_uniform_over_the_language():
    x = brackets(n=40000, length=6, seed=0)
    assert x.shape == (40000, 6) and x.dtype == torch.long and dyck_valid(x).all()
    counts = torch.unique(x, dim=0, return_counts=True)[1].double()
    assert len(counts) == 40
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())  # 39 degrees of freedom: P(chi2 > 90) < 1e-5
    assert chi2 < 90, chi2


def test_variable_length(reg):
    s = reg.create("dataset", "brackets", n=3000, length=10, variable_length=True, min_length=4, seed=1)
    assert isinstance(s, udm.Sequences) and s.tokens.shape == (3000, 10)
    assert set(s.lengths.tolist()) == {4, 6, 8, 10}
    freq = torch.bincount(s.lengths, minlength=11)[[4, 6, 8, 10]].double() / 3000
    assert ((freq - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / 3000)).all()
    assert (s.tokens[~s.mask] == -1).all() and dyck_valid(s.tokens, s.lengths).all()
    assert reg.get("metric", "bracket_validity")(s) == 1.0
    broken = udm.Sequences(s.tokens.clone(), s.lengths)
    broken.tokens[:1000, 0] = 1  # a closing bracket first
    assert bracket_validity(broken) == pytest.approx(2 / 3)


def test_seed_reproducible():
    assert torch.equal(brackets(n=50, seed=3), brackets(n=50, seed=3))
    assert not torch.equal(brackets(n=50, seed=3), brackets(n=50, seed=4))


def test_errors():
    with pytest.raises(udm.ConfigError, match=r"dataset brackets: length must be an even integer >= 2; got 7\."):
        brackets(n=4, length=7)
    with pytest.raises(udm.ConfigError, match=r"dataset brackets: n must be a non-negative integer; got -1\."):
        brackets(n=-1)
    with pytest.raises(udm.ConfigError, match=r"dataset brackets: min_length must be even and in \[0, 8\]; got 3\."):
        brackets(n=4, length=8, variable_length=True, min_length=3)
