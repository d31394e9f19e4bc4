"""Character-level text data, never downloaded: a built-in public-domain passage (the opening of Lewis
Carroll's *Alice's Adventures in Wonderland*, 1865), a local UTF-8 file, or a folder of ``*.txt`` files.

:func:`text` returns ``n`` random windows ``LongTensor (n, length)`` of character ids (a window never
spans two files); :func:`char_vocab` gives the id <-> character table (sorted distinct characters of
the whole corpus) to decode samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import udm
from udm.errors import ConfigError

ALICE = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?' "
    "So she was considering in her own mind (as well as she could, for the hot day made her feel very sleepy "
    "and stupid), whether the pleasure of making a daisy-chain would be worth the trouble of getting up and "
    "picking the daisies, when suddenly a White Rabbit with pink eyes ran close by her. "
    "There was nothing so very remarkable in that; nor did Alice think it so very much out of the way to hear "
    "the Rabbit say to itself, 'Oh dear! Oh dear! I shall be late!' (when she thought it over afterwards, it "
    "occurred to her that she ought to have wondered at this, but at the time it all seemed quite natural); "
    "but when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at it, and then hurried "
    "on, Alice started to her feet, for it flashed across her mind that she had never before seen a rabbit "
    "with either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she ran across "
    "the field after it, and fortunately was just in time to see it pop down a large rabbit-hole under the hedge. "
    "In another moment down went Alice after it, never once considering how in the world she was to get out again. "
    "The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly down, so suddenly that "
    "Alice had not a moment to think about stopping herself before she found herself falling down a very deep well."
)


@dataclass(frozen=True)
class CharVocab:
    """Sorted distinct characters of a corpus; id i is ``chars[i]``."""

    chars: str

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in s], dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Rows of ids ``(B, L)`` -> strings; ids outside the vocabulary (e.g. ``[MASK]``) print as ``_``."""
        return ["".join(self.chars[v] if 0 <= v < len(self.chars) else "_" for v in row.tolist()) for row in tokens]


def _documents(path: str | None) -> list[str]:
    """The texts of the corpus: the built-in passage, one file, or every ``*.txt`` in a folder (sorted by name)."""
    if path is None:
        return [ALICE]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".txt" and f.is_file())
        if not files:
            raise ConfigError(f"dataset text: the folder must contain .txt files; got none in {str(path)!r}.")
        return [f.read_text(encoding="utf-8") for f in files]
    if not p.is_file():
        raise ConfigError(f"dataset text: path must be an existing UTF-8 text file or a folder of .txt files; got "
                          f"{str(path)!r}. Omit path to use the built-in passage.")
    return [p.read_text(encoding="utf-8")]


def char_vocab(path: str | None = None) -> CharVocab:
    """The character table of the corpus at ``path`` (default: the built-in passage)."""
    return CharVocab("".join(sorted(set().union(*map(set, _documents(path))))))


def text(n: int = 20000, length: int = 32, path: str | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` consecutive characters at uniform random offsets, ``LongTensor (n, length)``."""
    for key, value in (("n", n), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"dataset text: {key} must be an integer >= 1; got {value!r}.")
    docs = _documents(path)
    if max(map(len, docs)) < length:
        raise ConfigError(f"dataset text: length must be at most the longest document's size {max(map(len, docs))}; "
                          f"got {length}. Use a shorter length or longer files.")
    vocab = CharVocab("".join(sorted(set().union(*map(set, docs)))))
    docs = [d for d in docs if len(d) >= length]  # a window lies inside one document
    ids = torch.cat([vocab.encode(d) for d in docs])
    first = torch.tensor([0] + [len(d) for d in docs]).cumsum(0)[:-1]  # where each document starts in ids
    windows = torch.tensor([len(d) - length + 1 for d in docs])  # start positions per document
    g = torch.Generator().manual_seed(int(seed))
    k = torch.randint(0, int(windows.sum()), (n,), generator=g)  # uniform over all windows of all documents
    doc = torch.searchsorted(windows.cumsum(0), k, right=True)
    start = first[doc] + k - (windows.cumsum(0) - windows)[doc]
    return ids[start[:, None] + torch.arange(length)[None]]


@udm.hookimpl
def udm_register_datasets(register):
    register(text)
