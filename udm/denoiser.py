"""The "predict" half of every reverse step: x0_hat ~ q_theta(x_0 | x_t) (DESIGN.md §1).

Samplers never call a network directly; they call a *denoiser* ``D(x_t, t, generator) -> x0_hat``.
:class:`Denoiser` builds one from a network, a corruption and a time type; oracles in
:mod:`udm.testing` are denoisers too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .families import Family, get_family

__all__ = ["Denoiser", "Prediction"]


@dataclass
class Prediction:
    """What :meth:`Denoiser.predict` returns: the point x0_hat and the q_theta parameters it came from
    (logits ``(batch, length, vocab)`` for categorical families; x_0 itself for Gaussian/Laplace)."""

    x0_hat: Any
    params: Any


class Denoiser:
    """x0_hat = point(q_theta(x_0 | x_t)) from a trained network.

    Args:
        network: ``nn.Module`` mapping ``(x_t, time_encoding (batch,))`` to the corruption's
            prediction target (x_0, eps, v or logits).
        corruption: converts the output to q_theta's parameters (``to_x0``) and names the family.
        time_type: encodes t for the network.
        family: override the corruption's family, e.g. ``Categorical(temperature=0.8)``.
        **family_options: options for the corruption's family (e.g. ``temperature``, ``top_k``).
    """

    def __init__(self, network: torch.nn.Module, corruption: Any, time_type: Any, *,
                 family: Family | str | None = None, **family_options: Any) -> None:
        self.network = network
        self.corruption = corruption
        self.time_type = time_type
        self.family = get_family(family if family is not None else corruption.family, **family_options)

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> Prediction:
        """x0_hat together with q_theta's parameters (samplers such as ``confidence`` need the logits)."""
        out = self.network(x_t, self.time_type.encode(t))
        sample_x0 = getattr(self.corruption, "sample_x0", None)
        if callable(sample_x0):  # structured q_theta (e.g. insertions): the corruption draws x0_hat itself,
            return Prediction(sample_x0(out, x_t, t, generator, family=self.family), out)  # with the family's options
        params = self.corruption.to_x0(out, x_t, t)
        return Prediction(self.family.point(params, generator), params)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
        return self.predict(x_t, t, generator).x0_hat
