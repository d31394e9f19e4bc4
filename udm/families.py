"""The q_theta(x_0 | x_t) families. The family of a corruption fixes the training loss (docs/explanation.md)
and how x0_hat is read off the network's output at sampling time.

=============  ===================================  ==================================================
family         per-sample loss                       x0_hat
=============  ===================================  ==================================================
gaussian       mean squared error over data dims    the mean (the output itself)
laplace        mean absolute error over data dims   the median (the output itself)
categorical    cross-entropy on the loss mask,       a sample from softmax(logits / temperature),
               divided by the sequence length        optionally top-k / top-p truncated, drawn in float64
=============  ===================================  ==================================================

Losses are means over data dimensions (not sums) so that learning rates do not depend on data size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError, did_you_mean

__all__ = ["Family", "Gaussian", "Laplace", "Categorical", "get_family", "FAMILIES"]


class Family:
    name = ""

    def loss(self, output, target, mask=None) -> torch.Tensor:
        """Per-sample negative log-likelihood up to constants, shape ``(batch,)``."""
        raise NotImplementedError

    def point(self, params, generator=None):
        """x0_hat from the family's parameters (mean, median or a sample)."""
        return params


def _mean_over_data(err: torch.Tensor, mask) -> torch.Tensor:
    if mask is not None:
        err = err * mask.to(err.dtype)
    return err.reshape(err.shape[0], -1).mean(dim=1)


class Gaussian(Family):
    name = "gaussian"

    def loss(self, output, target, mask=None):
        return _mean_over_data((output - target).square(), mask)


class Laplace(Family):
    name = "laplace"

    def loss(self, output, target, mask=None):
        return _mean_over_data((output - target).abs(), mask)


@dataclass
class Categorical(Family):
    """Categorical q_theta over the last dim of the logits ``(batch, length, vocab)``.

    Args:
        temperature: > 0; logits are divided by it before sampling.
        top_k: keep the k most likely tokens (``None``: all).
        top_p: keep the smallest set with probability >= top_p (nucleus; ``None``: all).
        greedy: take the argmax instead of sampling.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    name = "categorical"

    def loss(self, output, target, mask=None):
        ce = F.cross_entropy(output.flatten(0, -2).float(), target.flatten(), reduction="none")
        ce = ce.view(target.shape)
        if mask is not None:
            ce = ce * mask.to(ce.dtype)
        return ce.reshape(ce.shape[0], -1).mean(dim=1)

    def probs(self, params: torch.Tensor) -> torch.Tensor:
        """The distribution x0_hat is drawn from, float64 ``(..., vocab)``: softmax(logits / temperature),
        truncated to the top-k tokens and to the top-p nucleus; with ``greedy``, a point mass on the argmax.
        Structured q_theta (``sample_x0``) draw every categorical choice from this."""
        if self.greedy:
            return torch.zeros_like(params, dtype=torch.float64).scatter_(-1, params.argmax(-1, keepdim=True), 1.0)
        logits = params.double() / self.temperature
        if self.top_k is not None:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None:
            sorted_logits, idx = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.top_p  # keep the first token always
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
        return logits.softmax(dim=-1)

    def point(self, params, generator=None):
        if self.greedy:
            return params.argmax(dim=-1)
        probs = self.probs(params)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


FAMILIES = {"gaussian": Gaussian, "laplace": Laplace, "categorical": Categorical}


def get_family(family, **options) -> Family:
    """A :class:`Family` instance from a name (``options`` go to its constructor) or pass one through."""
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise ConfigError(
            f"family: must be one of {', '.join(FAMILIES)}; got {family!r}.{did_you_mean(str(family), FAMILIES)}"
        )
    return FAMILIES[family](**options)
