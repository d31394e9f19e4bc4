"""The ``embedding`` encoder: tokens to learned vectors, E(x)_l = e_{x_l} (Diffusion-LM, Li et al. 2022; CDCD,
Dieleman et al. 2022), and back.

* ``encode``: ``LongTensor (batch, length)`` -> ``(batch, length, dim)``, a lookup in the table e ``(V, dim)``
  (with ``normalize``, every row rescaled to norm sqrt(dim), CDCD's fixed-norm embeddings);
* ``decode(z, std)``: the logits of the exact posterior of the token at each position under a uniform prior,
  for z = e_{x} + std * noise: log p(v | z) = -|z - e_v|^2 / (2 std^2) + const (a tied decoder: no parameters of
  its own, so the reconstruction term rewards embeddings that stay apart relative to the noise);
* ``round(z)``: the nearest row of e at each position (Diffusion-LM's rounding).

The table starts as N(0, init_std^2) entries drawn from ``seed`` (unit-variance latents, like standardised
data), or is read from ``weights``: a ``.safetensors`` file with one ``(V, dim)`` tensor or a ``.npy`` array
(a pre-trained embedding, typically used frozen: ``latent(mode=frozen)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch.nn import functional as F

import udm
from udm.errors import ConfigError

__all__ = ["EmbeddingEncoder"]


class EmbeddingEncoder(udm.Encoder):
    """A table of token embeddings (see the module docstring).

    Args:
        vocab_size: V, the number of tokens (filled in from the data by ``udm run``).
        dim: the embedding dimension.
        init_std: the initial entries' standard deviation.
        normalize: rescale every embedding to norm sqrt(dim) (CDCD).
        weights: a pre-trained table: ``.safetensors`` (one tensor) or ``.npy``, shape ``(V, dim)``.
        seed: seeds the initial table (an explicit generator; the network's seed is separate).
    """

    name = "embedding"
    data_kind = "tokens"

    def __init__(self, vocab_size: Annotated[int, udm.Interval(ge=2)], dim: Annotated[int, udm.Interval(ge=1)] = 16,
                 init_std: Annotated[float, udm.Interval(gt=0)] = 1.0, normalize: bool = False,
                 weights: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ConfigError(f"encoder embedding: vocab_size must be an integer >= 2; got {vocab_size!r}. Pass the "
                              f"number of tokens (udm run fills it in from the data).")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"encoder embedding: dim must be an integer >= 1; got {dim!r}.")
        self.vocab_size, self.dim, self.normalize = vocab_size, dim, bool(normalize)
        if weights is not None:
            table = self._read(weights)
        else:
            g = torch.Generator().manual_seed(int(seed))
            table = torch.randn(vocab_size, dim, generator=g) * float(init_std)
        self.weight = torch.nn.Parameter(table)

    def _read(self, path: str) -> torch.Tensor:
        p = Path(path)
        where = "encoder embedding: weights"
        if not p.is_file() or p.suffix not in (".safetensors", ".npy"):
            raise ConfigError(f"{where} must be an existing .safetensors or .npy file; got {path!r}. Save the (V, dim) "
                              f"table with safetensors.torch.save_file or numpy.save.")
        if p.suffix == ".npy":
            table = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(p))
            if len(tensors) != 1:
                raise ConfigError(f"{where}: the file must hold exactly one tensor; got keys {sorted(tensors)}.")
            table = next(iter(tensors.values()))
        if tuple(table.shape) != (self.vocab_size, self.dim) or not table.is_floating_point():
            raise ConfigError(f"{where} must be a float table of shape ({self.vocab_size}, {self.dim}) (vocab_size, "
                              f"dim); got {table.dtype} {tuple(table.shape)} in {path!r}. Match vocab_size and dim.")
        return table.float().clone()

    def __repr__(self) -> str:
        return f"EmbeddingEncoder(vocab_size={self.vocab_size}, dim={self.dim}, normalize={self.normalize})"

    def table(self) -> torch.Tensor:
        """The embeddings e ``(V, dim)`` as encode uses them."""
        if self.normalize:
            return F.normalize(self.weight, dim=-1) * self.dim ** 0.5
        return self.weight

    def norms(self) -> torch.Tensor:
        """|e_v| ``(V,)`` (detached)."""
        return self.table().detach().norm(dim=-1)

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """``(batch, length)`` ids -> ``(batch, length, dim)``."""
        if not isinstance(x0, torch.Tensor) or x0.is_floating_point():
            raise ConfigError(f"encoder embedding: x0 must be integer token ids (batch, length); got "
                              f"{getattr(x0, 'dtype', type(x0).__name__)}.")
        return F.embedding(x0, self.table())

    def _sq_dist(self, z: torch.Tensor) -> torch.Tensor:
        """|z - e_v|^2 ``(..., V)`` for latents ``(..., dim)``."""
        e = self.table().to(z.dtype)
        return (z * z).sum(-1, keepdim=True) - 2 * z @ e.T + (e * e).sum(-1)

    def decode(self, z: torch.Tensor, std: Any) -> torch.Tensor:
        """Logits ``(..., V)``: -|z - e_v|^2 / (2 std^2) (``std`` > 0: a float or a tensor broadcastable against
        ``z[..., :1]``)."""
        std = torch.as_tensor(std, dtype=z.dtype, device=z.device)
        return -self._sq_dist(z) / (2 * std * std)

    def expect(self, probs: torch.Tensor) -> torch.Tensor:
        """sum_v probs[..., v] e_v: ``(batch, length, V)`` probabilities -> ``(batch, length, dim)`` latents (CDCD's
        score interpolation: the mean embedding under the network's token probabilities)."""
        if probs.shape[-1] != self.vocab_size:
            raise ConfigError(f"encoder embedding: the network's logits must have vocab_size = {self.vocab_size} "
                              f"entries per position; got shape {tuple(probs.shape)}. Build the network with V "
                              f"outputs per position (transformer: logits: true).")
        return probs @ self.table().to(probs.dtype)

    def round(self, z: torch.Tensor) -> torch.Tensor:
        """The nearest token at every position: ``(batch, length, dim)`` -> ``LongTensor (batch, length)``."""
        return self._sq_dist(z.detach()).argmin(-1)

    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(batch, length)`` -> ``(batch, length, dim)``; a latent shape maps to itself."""
        shape = tuple(int(d) for d in shape)
        if len(shape) == 2:
            return (*shape, self.dim)
        if len(shape) == 3 and shape[-1] == self.dim:
            return shape
        raise ConfigError(f"encoder embedding: shape must be (batch, length) for tokens or (batch, length, {self.dim}) "
                          f"for latents; got {shape}.")


@udm.hookimpl
def udm_register_encoders(register):
    register(EmbeddingEncoder)
