"""The encoder contract: a learned (or pre-trained) map from data to a continuous latent, and back.

A ``latent`` corruption diffuses E(x_0) instead of x_0, x_t = F_t(E(x_0), eps) with an inner corruption F
(docs/math.md, "Learned forward processes"): discrete tokens become Gaussian-diffusable vectors (Diffusion-LM,
CDCD, Plaid). An encoder is a ``torch.nn.Module`` (its parameters are trained with the network in joint mode
and frozen in frozen mode) with:

=====================  ==========================================================================
member                 contract
=====================  ==========================================================================
``data_kind``          the data it encodes: ``"tokens"`` (``LongTensor (batch, length)``) or ``"continuous"``
``encode(x0)``         z_0 = E(x_0), float ``(batch, *latent_shape)`` (differentiable in the parameters)
``decode(z, std)``     logits ``(batch, *data_shape, V)`` of the decoder p(x_0 | z) for a latent z that is
                       E(x_0) plus isotropic Gaussian noise of standard deviation ``std`` (a float, or a
                       tensor broadcastable against z): the reconstruction term of the bound
``round(z)``           the data the latent z stands for (tokens: the nearest embedding); the last step
``latent_shape(shape)`` the latent's shape for a data batch of ``shape`` (batch first); a latent shape maps to
                       itself
``expect(probs)``      optional: sum_v probs[..., v] E(v), the latent's mean under per-position token
                       probabilities ``(batch, *data_shape, V)`` (needed by ``prediction: logits``)
``is_data(x)``         whether a batch is data (to be encoded) rather than a latent (default: integer
                       tensors are token data)
=====================  ==========================================================================
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["Encoder"]


class Encoder(nn.Module):
    """Base class of encoders (see the module docstring). Subclasses set ``name`` and ``data_kind`` and implement
    :meth:`encode`, :meth:`decode`, :meth:`round` and :meth:`latent_shape`."""

    name: ClassVar[str] = ""
    data_kind: ClassVar[str] = "tokens"

    @abstractmethod
    def encode(self, x0: Any) -> torch.Tensor:
        """z_0 = E(x_0), float ``(batch, *latent_shape)``."""

    @abstractmethod
    def decode(self, z: torch.Tensor, std: Any) -> torch.Tensor:
        """Logits of p(x_0 | z) ``(batch, *data_shape, V)`` for z = E(x_0) + std * noise."""

    @abstractmethod
    def round(self, z: torch.Tensor) -> Any:
        """The data a latent ``z`` stands for (its most likely x_0)."""

    @abstractmethod
    def latent_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The latent's shape for data of ``shape`` (batch first); a latent shape maps to itself."""

    def expect(self, probs: torch.Tensor) -> torch.Tensor:
        """sum_v probs[..., v] E(v): the latent's mean when each position holds token v with probability
        ``probs`` ``(batch, *data_shape, V)`` (a latent corruption's ``prediction: logits``). Encoders of one
        latent per token implement it; the others cannot take a logits head."""
        raise ConfigError(f"encoder {self.name or type(self).__name__}: expect must be implemented for a latent "
                          f"corruption with prediction: logits; got an encoder without it. Use prediction: inner, or "
                          f"implement expect(probs).")

    def is_data(self, x: Any) -> bool:
        """Whether ``x`` is a data batch (to be encoded) rather than a latent: integer tensors are token data."""
        return isinstance(x, torch.Tensor) and not x.is_floating_point()

    def forward(self, x0: Any) -> torch.Tensor:
        return self.encode(x0)
