"""The variable-length sequence batch used by every plugin that changes length.

One small frozen dataclass, :class:`Sequences`: padded tokens ``(batch, max_length)`` plus
``lengths (batch,)``. Helpers convert from and to lists (:meth:`Sequences.pad_list`,
:meth:`Sequences.unpad`), from a keep-mask (:meth:`Sequences.from_mask`, the compaction every
deletion needs) and from and to fixed-width arrays with an end token (:meth:`Sequences.from_padded`,
:meth:`Sequences.padded`), which is how fixed-length corruptions such as ``mask`` see the same data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["Sequences"]


@dataclass(frozen=True, eq=False)
class Sequences:
    """A batch of token sequences of different lengths.

    Attributes:
        tokens: ``LongTensor (batch, max_length)``; positions at or after ``lengths[i]`` hold ``pad``.
        lengths: ``LongTensor (batch,)`` with 0 <= lengths[i] <= max_length.
        pad: the padding id (never a data token).

    Equality (``==``) compares the sequences themselves (lengths and real tokens), not the padding
    width, and returns a Python ``bool``.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    pad: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.ndim != 2 or self.tokens.dtype != torch.long:
            got = (f"{self.tokens.dtype} of shape {tuple(self.tokens.shape)}" if isinstance(self.tokens, torch.Tensor)
                   else type(self.tokens).__name__)
            raise ConfigError(f"Sequences: tokens must be a LongTensor (batch, max_length); got {got}. "
                              f"Use Sequences.pad_list(list_of_1d_tensors) to build a batch.")
        if not isinstance(self.lengths, torch.Tensor) or self.lengths.shape != (self.tokens.shape[0],):
            got = tuple(self.lengths.shape) if isinstance(self.lengths, torch.Tensor) else type(self.lengths).__name__
            raise ConfigError(f"Sequences: lengths must be a tensor of shape ({self.tokens.shape[0]},), one per row "
                              f"of tokens; got {got}. Pass one length per sequence.")
        if self.lengths.dtype != torch.long:
            raise ConfigError(f"Sequences: lengths must be a LongTensor; got {self.lengths.dtype}. "
                              f"Convert with lengths.long().")
        if len(self.lengths) and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > self.tokens.shape[1]):
            raise ConfigError(f"Sequences: lengths must lie in [0, {self.tokens.shape[1]}] (the padded width); got "
                              f"range [{int(self.lengths.min())}, {int(self.lengths.max())}]. Widen tokens or fix "
                              f"the lengths.")

    # ---------------------------------------------------------------- helpers
    @property
    def mask(self) -> torch.Tensor:
        """Bool ``(batch, max_length)``: True at real (non-padding) positions."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tokens.shape)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequences) or len(self) != len(other):
            return False
        if not bool((self.lengths == other.lengths.to(self.device)).all()):
            return False
        width = int(self.lengths.max()) if len(self) else 0
        a, b = self.tokens[:, :width], other.tokens[:, :width].to(self.device)
        return bool(((a == b) | ~self.mask[:, :width]).all())

    __hash__ = None  # mutable tensors inside: not hashable

    def __getitem__(self, idx) -> "Sequences":
        """Index the batch (int, slice, index tensor); the result keeps only needed padding."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(lengths) else 0
        return Sequences(self.tokens[idx][:, :width].contiguous(), lengths, self.pad)

    def to(self, device, non_blocking: bool = False) -> "Sequences":
        return Sequences(self.tokens.to(device, non_blocking=non_blocking),
                         self.lengths.to(device, non_blocking=non_blocking), self.pad)

    def unpad(self) -> list[torch.Tensor]:
        """The sequences as a list of 1-D LongTensors."""
        return [row[:n] for row, n in zip(self.tokens, self.lengths.tolist())]

    def tolist(self) -> list[list[int]]:
        """The sequences as lists of ints."""
        return [row.tolist() for row in self.unpad()]

    @classmethod
    def pad_list(cls, seqs: Sequence[torch.Tensor], pad: int = -1, device=None) -> "Sequences":
        """Collate 1-D LongTensors (or lists of ints) of any lengths into a padded batch."""
        rows = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise ConfigError(f"Sequences.pad_list: every sequence must be 1-D; got shape {tuple(r.shape)} "
                                  f"at index {i}. Flatten it or split it into rows.")
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        width = int(lengths.max()) if rows else 0
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return cls(tokens.to(device), lengths.to(device), pad)

    collate = pad_list

    @classmethod
    def cat(cls, batches: Sequence["Sequences"]) -> "Sequences":
        """Concatenate batches along the batch dimension (re-padding to the widest)."""
        if not batches:
            raise ConfigError("Sequences.cat: batches must be a non-empty list; got []. Pass at least one batch.")
        pad = batches[0].pad
        return cls.pad_list([s for b in batches for s in b.unpad()], pad=pad, device=batches[0].device)

    @classmethod
    def from_mask(cls, tokens: torch.Tensor, keep: torch.Tensor, pad: int = -1) -> "Sequences":
        """Keep, in order, the positions where ``keep`` is True: ``tokens, keep (batch, L)`` -> a batch
        whose row i is ``tokens[i][keep[i]]`` (vectorised; the width is the largest kept count)."""
        if keep.shape != tokens.shape or keep.dtype != torch.bool:
            raise ConfigError(f"Sequences.from_mask: keep must be a bool tensor shaped like tokens "
                              f"{tuple(tokens.shape)}; got {keep.dtype} {tuple(keep.shape)}. "
                              f"Build it with a comparison.")
        width = tokens.shape[1]
        pos = torch.arange(width, device=tokens.device).expand_as(tokens)
        order = torch.argsort(torch.where(keep, pos, pos + width), dim=1)  # kept first, in order
        lengths = keep.sum(1)
        out_w = int(lengths.max()) if len(lengths) else 0
        picked = tokens.gather(1, order)[:, :out_w]
        valid = torch.arange(out_w, device=tokens.device)[None] < lengths[:, None]
        return cls(torch.where(valid, picked, torch.full_like(picked, pad)), lengths, pad)

    @classmethod
    def from_padded(cls, tokens: torch.Tensor, end: int, pad: int = -1) -> "Sequences":
        """Read fixed-width rows ``(batch, L)`` that end at the first ``end`` token (or run to L)."""
        is_end = tokens == end
        length = torch.where(is_end.any(1), is_end.long().argmax(1), torch.full_like(tokens[:, 0], tokens.shape[1]))
        keep = torch.arange(tokens.shape[1], device=tokens.device)[None] < length[:, None]
        return cls(torch.where(keep, tokens, torch.full_like(tokens, pad)), length, pad)

    def padded(self, width: int, fill: int) -> torch.Tensor:
        """``LongTensor (batch, width)``: each sequence followed by ``fill`` (e.g. an end token) up to ``width``."""
        longest = int(self.lengths.max()) if len(self) else 0
        if width < longest:
            raise ConfigError(f"Sequences.padded: width must be >= the longest sequence ({longest}); got {width}. "
                              f"Raise width or drop long sequences.")
        out = torch.full((len(self), width), fill, dtype=torch.long, device=self.device)
        w = min(width, self.tokens.shape[1])
        out[:, :w] = torch.where(self.mask[:, :w], self.tokens[:, :w], out[:, :w])
        return out
