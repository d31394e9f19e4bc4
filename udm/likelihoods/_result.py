"""What a likelihood estimate returns: per-example terms of a batch, then the dataset's summary.

An estimator returns, for a batch of B examples, a :class:`BatchNll`: per example the negative log-likelihood
in nats split into its terms (docs/math.md, "Likelihoods")::

    -log p(x_0)  <=  prior + diffusion + reconstruction (+ dequantisation)

and the number of dimensions it is counted over (d = the data's size per example; a sequence's length).
:func:`summarise` turns the batches into a :class:`LikelihoodResult`: nats (and bits) per dimension, the
standard error over examples, the per-term breakdown and the settings that produced it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["BatchNll", "Terms", "LikelihoodResult", "summarise"]

TERMS = ("prior", "diffusion", "reconstruction", "dequantisation")


@dataclass
class BatchNll:
    """Per-example terms ``(B,)`` float64 in nats (their sum is the example's NLL estimate) and ``dims (B,)``.

    Attributes:
        prior: KL(q(x_1 | x_0) || p(x_1)) for a bound, -log p_1(x_1) for the ODE.
        diffusion: the sum of the reverse steps' KLs (or their continuous-time limit); for the ODE minus the
            integral of the velocity's divergence.
        reconstruction: -log p(x_0 | x_{t_1}), the decoder (with the noise entropy where the ODE starts noised).
        dequantisation: -d log(bin width) under uniform dequantisation, else 0.
        dims: dimensions per example (d; the length of a sequence).
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    reconstruction: torch.Tensor
    dims: torch.Tensor
    dequantisation: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        out = self.prior + self.diffusion + self.reconstruction
        return out if self.dequantisation is None else out + self.dequantisation


@dataclass(frozen=True)
class Terms:
    """The breakdown of ``nats_per_dim``: each term's total over the examples divided by their dimensions."""

    prior: float
    diffusion: float
    reconstruction: float
    dequantisation: float = 0.0


@dataclass
class LikelihoodResult:
    """A likelihood estimate over a dataset (``udm.likelihood``).

    Attributes:
        estimator: the registered estimator's name.
        nats_per_dim: sum of the examples' NLLs / sum of their dimensions (nats). For a bound (``bound``) this
            is an upper bound on the true NLL per dimension, up to Monte-Carlo error.
        bits_per_dim: ``nats_per_dim / ln 2`` when the number is a discrete probability (quantised data under a
            discretised decoder or uniform dequantisation; tokens); ``None`` for a density of continuous data,
            whose nats per dimension have no bits/dim reading.
        stderr: the standard error of ``nats_per_dim`` over the examples (data and Monte-Carlo noise together).
        stderr_bits: the same in bits, or ``None``.
        terms: the per-term breakdown of ``nats_per_dim`` (:class:`Terms`).
        nats: the mean NLL per example (nats).
        n: the number of examples; dims: their mean dimension.
        bound: ``True`` for an ELBO (an upper bound on the NLL), ``False`` for an estimate (the ODE).
        kind: ``"discrete"`` (a probability of the data as given) or ``"density"`` (a density).
        dequantisation: ``"discretised"``, ``"uniform"``, ``"none"`` (a density) or ``"tokens"``.
        settings: the estimator's options as run, and the sampling settings (seed, batch size).
        per_example: ``(n,)`` float64 NLL per example in nats (not in :meth:`to_record`).
    """

    estimator: str
    nats_per_dim: float
    bits_per_dim: float | None
    stderr: float
    stderr_bits: float | None
    terms: Terms
    nats: float
    n: int
    dims: float
    bound: bool
    kind: str
    dequantisation: str
    settings: dict[str, Any] = field(default_factory=dict)
    per_example: torch.Tensor | None = field(default=None, repr=False)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready mapping (what ``eval.jsonl`` holds under ``nll``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("per_example", "terms")}
        out["terms"] = asdict(self.terms)
        return out

    def summary(self) -> str:
        """One line: the value, its standard error and what it is."""
        unit, value, se = ("bits/dim", self.bits_per_dim, self.stderr_bits) if self.bits_per_dim is not None else \
            ("nats/dim (density)", self.nats_per_dim, self.stderr)
        what = "upper bound" if self.bound else "estimate"
        return (f"{self.estimator}: {value:.4f} +- {se:.4f} {unit} ({what}, {self.n} examples, "
                f"dequantisation {self.dequantisation})")


def _ratio_stderr(nll: torch.Tensor, dims: torch.Tensor) -> float:
    """Standard error of sum(nll) / sum(dims) over n examples (delta method; for equal dims the plain
    standard error of the per-dimension mean)."""
    n = nll.numel()
    if n < 2:
        return float("nan")
    r = nll.sum() / dims.sum()
    resid = nll - r * dims
    return float(resid.square().sum().div(n * (n - 1)).sqrt() / dims.mean())


def summarise(name: str, batches: list[BatchNll], *, bound: bool, kind: str, dequantisation: str,
              settings: dict[str, Any]) -> LikelihoodResult:
    """Combine the batches of an estimator into a :class:`LikelihoodResult`."""
    def cat(key: str) -> torch.Tensor:
        parts = [getattr(b, key) for b in batches]
        if key == "dequantisation":
            parts = [p if p is not None else torch.zeros_like(b.prior) for p, b in zip(parts, batches)]
        return torch.cat([p.detach().double().cpu().reshape(-1) for p in parts])

    values = {key: cat(key) for key in TERMS}
    dims = cat("dims")
    nll = sum(values.values())
    total_dims = float(dims.sum())
    nats = float(nll.sum()) / total_dims
    se = _ratio_stderr(nll, dims)
    discrete = kind == "discrete"
    return LikelihoodResult(
        name, nats, nats / math.log(2) if discrete else None, se, se / math.log(2) if discrete else None,
        Terms(**{k: float(v.sum()) / total_dims for k, v in values.items()}), float(nll.mean()), int(nll.numel()),
        total_dims / max(int(nll.numel()), 1), bound, kind, dequantisation, settings, nll)
