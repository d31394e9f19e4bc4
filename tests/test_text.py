"""Character-level text data: windows of the corpus, the character table, a local file, errors."""

import pytest
import torch

import udm
from udm.plugins.text import ALICE, char_vocab, text


def test_windows_are_substrings_of_the_corpus(reg):
    x = reg.create("dataset", "text", n=200, length=24, seed=0)
    assert x.shape == (200, 24) and x.dtype == torch.long
    vocab = char_vocab()
    assert len(vocab) == len(set(ALICE)) and int(x.max()) < len(vocab)
    assert all(s in ALICE for s in vocab.decode(x))
    assert torch.equal(vocab.encode(ALICE[:10]), torch.tensor([vocab.chars.index(c) for c in ALICE[:10]]))
    assert vocab.decode(torch.tensor([[len(vocab)]])) == ["_"]
    assert torch.equal(text(n=5, seed=1), text(n=5, seed=1))


def test_local_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("abcabcabd", encoding="utf-8")
    x = text(n=50, length=3, path=str(f), seed=0)
    assert char_vocab(str(f)).chars == "abcd"
    assert set(char_vocab(str(f)).decode(x)) <= {"abc", "bca", "cab", "abd"}


def test_errors(tmp_path):
    with pytest.raises(udm.ConfigError, match=r"dataset text: path must be an existing UTF-8 text file or a folder of "
                                              r"\.txt files; got '.*nope'"):
        text(path=str(tmp_path / "nope"))
    with pytest.raises(udm.ConfigError, match=r"dataset text: length must be an integer >= 1; got 0\."):
        text(length=0)
    with pytest.raises(udm.ConfigError, match=r"dataset text: length must be at most the longest document's size"):
        text(length=10**6)
