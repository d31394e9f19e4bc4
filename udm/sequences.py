"""The variable-length sequence batch used by every plugin that changes length (DESIGN.md §2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["Sequences"]


@dataclass(frozen=True)
class Sequences:
    """A batch of token sequences of different lengths.

    Attributes:
        tokens: ``LongTensor (batch, max_length)``; positions at or after ``lengths[i]`` hold ``pad``.
        lengths: ``LongTensor (batch,)`` with 0 <= lengths[i] <= max_length.
        pad: the padding id (never a data token).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    pad: int = -1

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.dtype != torch.long:
            raise ConfigError(f"Sequences: tokens must be a LongTensor (batch, max_length); got "
                              f"{self.tokens.dtype} of shape {tuple(self.tokens.shape)}.")
        if self.lengths.shape != (self.tokens.shape[0],):
            raise ConfigError(f"Sequences: lengths must have shape ({self.tokens.shape[0]},); got "
                              f"{tuple(self.lengths.shape)}.")
        if len(self.lengths) and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > self.tokens.shape[1]):
            raise ConfigError(f"Sequences: lengths must lie in [0, {self.tokens.shape[1]}]; got range "
                              f"[{int(self.lengths.min())}, {int(self.lengths.max())}].")

    # ---------------------------------------------------------------- helpers
    @property
    def mask(self) -> torch.Tensor:
        """Bool ``(batch, max_length)``: True at real (non-padding) positions."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tokens.shape)

    def __len__(self) -> int:
        return self.tokens.shape[0]

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

    @classmethod
    def pad_list(cls, seqs: Sequence[torch.Tensor], pad: int = -1, device=None) -> "Sequences":
        """Collate 1-D LongTensors of any lengths into a padded batch."""
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        width = int(lengths.max()) if len(seqs) else 0
        tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return cls(tokens.to(device), lengths.to(device), pad)

    collate = pad_list

    @classmethod
    def cat(cls, batches: Sequence["Sequences"]) -> "Sequences":
        """Concatenate batches along the batch dimension (re-padding to the widest)."""
        pad = batches[0].pad
        return cls.pad_list([s for b in batches for s in b.unpad()], pad=pad, device=batches[0].device)
