"""The built-in ``insertion`` model: q_theta(x_0 | x_t) for the ``delete`` corruption.

One bidirectional Transformer trunk, used in two passes (the second only when asked for):

1. **counts**: read ``[BOS] x_t [EOS]``; gap g (between x_t's tokens g - 1 and g) is scored from the
   concatenated states of its two neighbours -> ``count_logits (batch, W + 1, max_count + 1)``.
2. **tokens**: read x_t with the placeholders inserted (the holes given by the corruption, i.e. the
   true counts at training time, the sampled counts at sampling time), holes shown as ``[MASK]``,
   and score every position -> ``(batch, L, vocab_size)``; only the holes are used (as in masked
   diffusion).

A learned pass embedding tells the trunk which pass it runs; the time encoding ``(batch,)`` enters
through a sinusoidal embedding added to every position. Padding is masked out of attention, so a
row's outputs do not depend on the other rows of the batch.

**Length limit.** Positions are *learned absolute* embeddings for 0 .. max_length + 1 (BOS, the tokens,
EOS), so the model reads sequences of at most ``max_length`` tokens, and ``sample_x0`` never grows x0_hat
beyond it (``InsertionOutput.max_length``). A longer sequence is refused with an error naming the limit;
padding beyond the longest row does not count. Left unset, ``max_length`` is the data's longest sequence
(the experiment runner passes ``data_shape``), else 64. Relative or rotary positions would lift the
limit; they are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

import udm
from udm.errors import ConfigError


@dataclass
class InsertionOutput:
    """What :class:`Insertion` returns for x_t (the protocol of ``udm.plugins.delete``)."""

    count_logits: torch.Tensor  #: ``(batch, W + 1, max_count + 1)``, logits of the count in each gap
    network: "Insertion"
    t_enc: torch.Tensor  #: ``(batch,)`` time encoding, reused by the token pass

    @property
    def max_length(self) -> int:
        return self.network.max_length

    def token_logits(self, x: udm.Sequences, holes: torch.Tensor) -> torch.Tensor:
        """Second pass: logits ``(batch, L, vocab_size)`` for ``x`` (x_t with placeholders) at every position."""
        return self.network.token_logits(x, holes, self.t_enc)


class Insertion(nn.Module):
    """Insertion Transformer (module docstring).

    Args:
        vocab_size: data tokens are 0..vocab_size - 1 (ids vocab_size.. are MASK, BOS, EOS).
        max_length: longest sequence (x_0) it reads (learned absolute positions; module docstring); counts
            go up to ``max_count`` (default ``max_length``). Default: ``data_shape[0]``, else 64.
        width, depth, heads: Transformer size; dropout: attention/MLP dropout.
        data_shape: ``[padded width]`` of the training data (injected by the experiment runner).
    """

    name = "insertion"

    def __init__(self, vocab_size: int, max_length: int | None = None, width: int = 128, depth: int = 3,
                 heads: int = 4, dropout: float = 0.0, max_count: int | None = None,
                 data_shape: list[int] | tuple[int, ...] | None = None) -> None:
        super().__init__()
        if max_length is None:
            max_length = int(data_shape[0]) if data_shape else 64
        if vocab_size < 1 or max_length < 1 or width % heads or width % 2:
            raise ConfigError(f"model insertion: vocab_size and max_length must be >= 1 and width an even multiple of "
                              f"heads; got vocab_size={vocab_size}, max_length={max_length}, width={width}, "
                              f"heads={heads}. Pick e.g. width=128, heads=4.")
        self.vocab_size, self.max_length, self.width = vocab_size, max_length, width
        self.max_count = max_length if max_count is None else int(max_count)
        self.mask_id, self.bos_id, self.eos_id = vocab_size, vocab_size + 1, vocab_size + 2
        self.embed = nn.Embedding(vocab_size + 3, width)
        self.pos = nn.Embedding(max_length + 2, width)
        self.pass_embed = nn.Embedding(2, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.trunk = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.count_head = nn.Sequential(nn.Linear(2 * width, width), nn.GELU(), nn.Linear(width, self.max_count + 1))
        self.token_head = nn.Linear(width, vocab_size)

    def _encode(self, tokens: torch.Tensor, lengths: torch.Tensor, t_enc: torch.Tensor, which: int) -> torch.Tensor:
        """States ``(batch, L + 2, width)`` of ``[BOS] tokens [EOS]`` (ids already mapped, padding anywhere)."""
        b, w = tokens.shape
        longest = int(lengths.max()) if b else 0
        if longest > self.max_length:
            raise ConfigError(f"model insertion: sequences must be at most max_length={self.max_length} tokens long "
                              f"(learned absolute positions); got a sequence of {longest}. Build the model with "
                              f"max_length >= the longest sequence (left unset, it is taken from the data).")
        if w > self.max_length:  # padding only: encode the real width, pad the states back (never read)
            h = self._encode(tokens[:, :longest], lengths, t_enc, which)
            return torch.nn.functional.pad(h, (0, 0, 0, w - longest))
        pos = torch.arange(w + 2, device=tokens.device)[None]
        ids = torch.full((b, w + 2), self.eos_id, dtype=torch.long, device=tokens.device)
        ids[:, 0] = self.bos_id
        inside = (pos[:, 1:-1] <= lengths[:, None]) & (tokens >= 0)
        ids[:, 1:-1] = torch.where(inside, tokens, ids[:, 1:-1])
        pad = pos > (lengths[:, None] + 1)
        h = self.embed(ids) + self.pos(pos) + self.pass_embed.weight[which]
        temb = self.time_mlp(udm.nn.timestep_embedding(t_enc, self.width).to(h.dtype))
        h = h + rearrange(temb, "b w -> b 1 w")  # the same time embedding at every position
        return self.norm(self.trunk(h, src_key_padding_mask=pad))

    def forward(self, x_t: udm.Sequences, t_enc: torch.Tensor) -> InsertionOutput:
        if not isinstance(x_t, udm.Sequences):
            raise ConfigError(f"model insertion: x_t must be a udm.Sequences batch; got {type(x_t).__name__}. "
                              f"Use it with the 'delete' corruption.")
        h = self._encode(x_t.tokens, x_t.lengths, t_enc, 0)
        gaps = torch.cat([h[:, :-1], h[:, 1:]], -1)  # (B, W + 1, 2 width)
        return InsertionOutput(self.count_head(gaps), self, t_enc)

    def token_logits(self, x: udm.Sequences, holes: torch.Tensor, t_enc: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(holes, torch.full_like(x.tokens, self.mask_id), x.tokens)
        return self.token_head(self._encode(tokens, x.lengths, t_enc, 1)[:, 1:-1])


@udm.hookimpl
def udm_register_models(register):
    register(Insertion)
