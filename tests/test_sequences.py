"""udm.Sequences: the variable-length batch (round trips, indexing, compaction, errors)."""

import pytest
import torch

import udm
from udm.errors import ConfigError


def test_pad_list_unpad_round_trip_and_mask():
    rows = [[3, 1, 4], [], [1, 5, 9, 2, 6], [5]]
    s = udm.Sequences.pad_list(rows, pad=-1)
    assert s.shape == (4, 5) and s.lengths.tolist() == [3, 0, 5, 1]
    assert s.tolist() == rows
    assert s.mask.sum().item() == 9 and bool((s.tokens[~s.mask] == -1).all())
    assert udm.Sequences.collate(s.unpad()) == s


def test_getitem_with_index_tensor_trims_padding_and_to_keeps_content():
    s = udm.Sequences.pad_list([[1, 2, 3, 4], [5], [6, 7]])
    sub = s[torch.tensor([1, 2, 1])]
    assert sub.tolist() == [[5], [6, 7], [5]] and sub.shape == (3, 2)
    assert s[0].tolist() == [[1, 2, 3, 4]] and s[-1].tolist() == [[6, 7]]
    moved = s.to("cpu", non_blocking=True)
    assert moved == s and moved.device.type == "cpu" and len(moved) == 3 and moved.dtype == torch.long


def test_equality_ignores_padding_width_but_not_content():
    a = udm.Sequences.pad_list([[1, 2], [3]])
    wide = udm.Sequences(torch.tensor([[1, 2, -1, -1], [3, -1, -1, -1]]), torch.tensor([2, 1]))
    assert a == wide
    assert not a == udm.Sequences.pad_list([[1, 2], [4]])
    assert not a == udm.Sequences.pad_list([[1, 2], [3, 0]])
    assert not a == a.tokens


def test_cat_repads_to_widest():
    a, b = udm.Sequences.pad_list([[1]]), udm.Sequences.pad_list([[2, 3, 4], []])
    assert udm.Sequences.cat([a, b]).tolist() == [[1], [2, 3, 4], []]


def test_from_mask_keeps_in_order():
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    keep = torch.tensor([[False, True, False, True], [False, False, False, False]])
    out = udm.Sequences.from_mask(tokens, keep, pad=-7)
    assert out.tolist() == [[2, 4], []] and out.shape == (2, 2) and out.tokens[1].tolist() == [-7, -7]


def test_padded_and_from_padded_round_trip_with_end_token():
    s = udm.Sequences.pad_list([[0, 1], [], [2, 2, 2]])
    fixed = s.padded(5, fill=9)
    assert fixed.tolist() == [[0, 1, 9, 9, 9], [9, 9, 9, 9, 9], [2, 2, 2, 9, 9]]
    assert udm.Sequences.from_padded(fixed, end=9) == s
    # everything after the first end token is discarded; a row without one runs to full width
    back = udm.Sequences.from_padded(torch.tensor([[0, 9, 1], [1, 2, 3]]), end=9)
    assert back.tolist() == [[0], [1, 2, 3]]


@pytest.mark.parametrize("tokens, lengths, match", [
    (torch.zeros(2, 3), torch.tensor([1, 2]), r"Sequences: tokens must be a LongTensor \(batch, max_length\); got torch.float32"),
    (torch.zeros(3, dtype=torch.long), torch.tensor([1]), r"Sequences: tokens must be a LongTensor .* shape \(3,\)"),
    (torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 2, 3]), r"Sequences: lengths must be a tensor of shape \(2,\), one per row of tokens; got \(3,\)\. Pass one"),
    (torch.zeros(2, 3, dtype=torch.long), torch.tensor([1.0, 2.0]), r"Sequences: lengths must be a LongTensor; got torch.float32\. Convert"),
    (torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 4]), r"Sequences: lengths must lie in \[0, 3\] \(the padded width\); got range \[1, 4\]\. Widen"),
    (torch.zeros(2, 3, dtype=torch.long), torch.tensor([-1, 2]), r"lengths must lie in \[0, 3\] .* got range \[-1, 2\]"),
])
def test_inconsistent_lengths_are_clear_errors(tokens, lengths, match):
    with pytest.raises(ConfigError, match=match):
        udm.Sequences(tokens, lengths)


def test_helper_errors():
    with pytest.raises(ConfigError, match=r"Sequences.pad_list: every sequence must be 1-D; got shape \(2, 2\) at index 1\."):
        udm.Sequences.pad_list([[1], [[1, 2], [3, 4]]])
    with pytest.raises(ConfigError, match=r"Sequences.cat: batches must be a non-empty list; got \[\]\."):
        udm.Sequences.cat([])
    with pytest.raises(ConfigError, match=r"Sequences.from_mask: keep must be a bool tensor shaped like tokens \(1, 2\)"):
        udm.Sequences.from_mask(torch.tensor([[1, 2]]), torch.tensor([[1, 0]]))
    with pytest.raises(ConfigError, match=r"Sequences.padded: width must be >= the longest sequence \(3\); got 2\."):
        udm.Sequences.pad_list([[1, 2, 3]]).padded(2, fill=0)
