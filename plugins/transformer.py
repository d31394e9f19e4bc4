"""The built-in ``transformer`` model: a small bidirectional, time-conditioned Transformer for tokens.

x_t ``LongTensor (B, L)`` with ids in [0, vocab_size] (id ``vocab_size`` is ``[MASK]``, so the embedding has
vocab_size + 1 rows) and the time encoding ``(B,)`` -> logits ``(B, L, vocab_size)``. Pre-LN blocks with
adaLN-Zero time conditioning (DiT, Peebles & Xie 2023): each block's LayerNorms are shifted/scaled and its
residual branches gated by a zero-initialised projection of the time embedding. Learned positions.

With ``input_dim`` (taken from a two-dimensional ``data_shape`` ``[length, dim]``, the shape of a latent
corruption's embeddings) the input is continuous ``(B, L, dim)``, projected to the width, and the output has the
same shape (the latent corruption's prediction target) instead of logits.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

import udm
from udm.errors import ConfigError
from udm.nn import timestep_embedding


def _modulate(h, shift, scale):
    """adaLN: h ``(B, L, W)`` scaled and shifted per example by ``(B, W)`` vectors."""
    return h * (1 + rearrange(scale, "b w -> b 1 w")) + rearrange(shift, "b w -> b 1 w")


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = self.ada(temb).chunk(6, dim=-1)
        qkv = self.qkv(_modulate(self.norm1(h), s1, c1))
        q, k, v = rearrange(qkv, "b l (three heads d) -> three b heads l d", three=3, heads=self.heads)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + rearrange(g1, "b w -> b 1 w") * self.proj(rearrange(a, "b heads l d -> b l (heads d)"))
        return h + rearrange(g2, "b w -> b 1 w") * self.mlp(_modulate(self.norm2(h), s2, c2))


class TokenTransformer(nn.Module):
    """Bidirectional Transformer denoiser for tokens.

    Args:
        vocab_size: number of data tokens V (outputs V logits; inputs may also hold the mask id V).
        max_length: longest sequence (size of the learned position table); taken from ``data_shape[0]``
            when omitted (the experiment runner injects ``data_shape``).
        width, depth, heads: model size (width divisible by heads); mlp_ratio: MLP hidden = ratio * width.
        time_dim: sinusoidal time-embedding size; dropout: attention dropout.
        input_dim: continuous inputs and outputs ``(B, L, input_dim)`` instead of token ids and logits (default:
            ``data_shape[1]`` when ``data_shape`` is ``[length, dim]``).
        logits: with continuous inputs, output V logits per position ``(B, L, vocab_size)`` instead of
            ``input_dim`` values (a latent corruption with ``prediction: logits``).
    """

    name = "transformer"

    def __init__(self, vocab_size: int, max_length: int | None = None, width: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 4, time_dim: int = 64, dropout: float = 0.0,
                 data_shape: list[int] | tuple[int, ...] | None = None, input_dim: int | None = None,
                 logits: bool = False) -> None:
        super().__init__()
        if input_dim is None and data_shape is not None and len(data_shape) == 2:
            input_dim = int(data_shape[1])
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"model transformer: vocab_size must be an integer >= 1; got {vocab_size!r}.")
        if max_length is None and data_shape is not None:
            max_length = int(data_shape[0])
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"model transformer: max_length must be an integer >= 1; got {max_length!r}. "
                              f"Pass max_length (or data_shape) = the sequence length.")
        if width % heads:
            raise ConfigError(f"model transformer: width must be divisible by heads; got width={width}, heads={heads}.")
        self.vocab_size, self.max_length, self.time_dim, self.input_dim = vocab_size, max_length, time_dim, input_dim
        if input_dim is not None:
            self.embed = nn.Linear(input_dim, width)
        else:
            self.embed = nn.Embedding(vocab_size + 1, width)
            nn.init.normal_(self.embed.weight, std=0.02)  # same scale as the positions (GPT-2 style)
        self.pos = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.ada = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.head = nn.Linear(width, input_dim if input_dim is not None and not logits else vocab_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, L)`` ids in [0, vocab_size] (or ``(B, L, input_dim)`` floats), t ``(B,)`` time encoding, padding
        ``(B, L)`` bool (True = pad, not attended to; optional) -> logits ``(B, L, vocab_size)`` (or
        ``(B, L, input_dim)`` with continuous inputs and ``logits`` off)."""
        rank = 2 if self.input_dim is None else 3
        if x.ndim != rank or x.shape[1] > self.max_length:
            dim = "" if rank == 2 else f", {self.input_dim}"
            raise ConfigError(f"model transformer: x must have shape (batch, length <= {self.max_length}{dim}); got "
                              f"{tuple(x.shape)}. Build the model with a larger max_length.")
        temb = F.silu(self.time_mlp(timestep_embedding(t, self.time_dim)))
        inp = x.clamp(0, self.vocab_size) if self.input_dim is None else x.to(self.embed.weight.dtype)
        h = self.embed(inp) + self.pos[: x.shape[1]]
        attn_mask = None if padding is None else rearrange(~padding, "b l -> b 1 1 l")
        for block in self.blocks:
            h = block(h, temb, attn_mask)
        shift, scale = self.ada(temb).chunk(2, dim=-1)
        return self.head(_modulate(self.norm(h), shift, scale))


@udm.hookimpl
def udm_register_models(register):
    register(TokenTransformer)
