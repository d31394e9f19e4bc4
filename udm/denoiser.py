"""The "predict" half of every reverse step: x0_hat ~ q_theta(x_0 | x_t).

Samplers never call a network directly; they call a *denoiser*. :class:`Denoiser` builds one from a
network, a corruption and a time type and returns a :class:`Prediction`: the x0_hat a rule uses, and
q_theta's parameters (logits; the Gaussian mean and, when a variance source is given, its variance).
Any callable ``(x_t, t, generator) -> x0_hat`` is a denoiser too (the oracles of :mod:`udm.testing`).

q_theta has a variance (docs/math.md, "q_theta with a variance"): with a Gaussian family and a
variance source, x0_hat is *drawn* from N(mean, Sigma_t) instead of being the mean. Every rule is linear
in x0_hat, so this adds gamma^2 Sigma_t to the step's variance: with the DDPM posterior this is
Analytic-DPM's optimal variance (Bao et al. 2022), with ``invert`` Analytic-DDIM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .families import Family, get_family
from .time import network_time

__all__ = ["Denoiser", "Prediction", "draw_gaussian"]


@dataclass
class Prediction:
    """What a denoiser returns for a batch x_t at time t.

    Attributes:
        x0_hat: the value rules use: the mean, or a draw from q_theta (categorical families, or a
            Gaussian with a variance source).
        params: q_theta's raw parameters (logits ``(batch, length, vocab)`` for categorical families,
            the mean for Gaussian ones), or ``None`` for plain callables.
        mean: E_q[x_0] for Gaussian/Laplace families (what the last step returns); ``None`` otherwise.
        variance: q_theta's variance in the corruption's basis (a float, ``(batch,)``-broadcastable, per
            coefficient or per element), or ``None`` for a point estimate.
        eps_hat: the noise posterior at (x_t, x0_hat) where the corruption is linear-Gaussian and it was
            asked for (``Denoiser(extras=True)``), else ``None`` (also under ``draws="last"``, where they were the
            draw's and the rules step with the mean).
        score: the score (a x0_hat - x_t)/s^2 in the same cases, else ``None``.
        draw: q_theta's draw, kept aside while the rules step with the mean (the sampler option
            ``draws="last"``: the last step returns it); else ``None``.
    """

    x0_hat: Any
    params: Any = None
    mean: Any = None
    variance: Any = None
    eps_hat: Any = None
    score: Any = None
    draw: Any = None


class Denoiser:
    """x0_hat ~ q_theta(x_0 | x_t) from a trained network.

    Args:
        network: ``nn.Module`` mapping ``(x_t, time_encoding (batch,))`` to the corruption's prediction
            target (x_0, eps, v, score, flow velocity or logits). With ``variance="head"`` it returns a
            pair ``(output, variance)``.
        corruption: converts the output to q_theta's parameters (``to_x0``) and names the family.
        time_type: encodes t for the network.
        family: override the corruption's family, e.g. ``Categorical(temperature=0.8)``.
        variance: q_theta's variance source for Gaussian families: ``None`` (the mean, a point
            estimate), ``"head"`` (the network's second output), a callable ``(t (batch,), x_t) ->
            variance`` such as :class:`udm.variance.VarianceTable`, or a source with ``uses_head = True``
            whose ``from_head(head, x_t, t, mean, marginal)`` turns the network's second output into the
            variance (:class:`udm.variance_head.HeadVariance`, SN-/NPR-DPM). Variances live in the
            corruption's basis.
        grad: keep autograd on through the network (off by default: sampling needs no gradients).
        extras: also fill ``eps_hat`` and ``score`` (linear-Gaussian corruptions).
        **family_options: options for the corruption's family (e.g. ``temperature``, ``top_k``).
    """

    #: samplers may pass the corruption's precomputed coefficients (``marginal=``) to :meth:`predict`
    accepts_marginal = True

    def __init__(self, network: torch.nn.Module, corruption: Any, time_type: Any, *,
                 family: Family | str | None = None, variance: Any = None, grad: bool = False, extras: bool = False,
                 **family_options: Any) -> None:
        self.network = network
        self.corruption = corruption
        self.time_type = time_type
        self.variance, self.grad, self.extras = variance, grad, extras
        parts = getattr(corruption, "parts", None)
        #: a corruption made of parts (a product): one denoiser per part reads that part of the output (family
        #: options go to the parts whose family takes them)
        self._parts = None if not isinstance(parts, Mapping) else {
            k: Denoiser(network, c, time_type, grad=grad, extras=extras, **_options_for(c.family, family_options))
            for k, c in parts.items()}
        self.family = None if self._parts is not None else \
            get_family(family if family is not None else corruption.family, **family_options)
        if variance is not None:
            from .variance import check_variance_source

            check_variance_source(variance, corruption, self.family)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None, *,
                marginal: Any = None) -> Prediction:
        """The prediction at ``x_t`` ``(batch, ...)``, times ``t`` ``(batch,)`` float64 (``marginal``: the
        corruption's coefficients at t when the caller has them)."""
        with torch.set_grad_enabled(self.grad):
            out = self.network(x_t, network_time(self.time_type, self.corruption, t))
            var = head = None
            if self.variance == "head":
                out, var = out
            elif getattr(self.variance, "uses_head", False):  # a second head's raw output (udm.variance_head)
                out, head = out
            if self._parts is not None:
                return self._predict_parts(out, x_t, t, generator)
            return self._prediction(out, x_t, t, generator, marginal, var, head)

    def _prediction(self, out: Any, x_t: Any, t: torch.Tensor, generator: torch.Generator | None, marginal: Any,
                    var: Any, head: Any = None) -> Prediction:
        """q_theta's prediction from the network output ``out`` (the corruption's target)."""
        sample_x0 = getattr(self.corruption, "sample_x0", None)
        if callable(sample_x0):  # a structured q_theta (e.g. insertions): the corruption draws x0_hat itself
            return Prediction(sample_x0(out, x_t, t, generator, family=self.family), out)  # with its options
        if marginal is not None:
            params = self.corruption.to_x0(out, x_t, t, marginal=marginal)
        else:
            params = self.corruption.to_x0(out, x_t, t)
        if self.family.name == "categorical":
            return Prediction(self.family.point(params, generator), params)
        if self.variance is not None and var is None:
            var = self.variance(t, x_t) if head is None else self.variance.from_head(head, x_t, t, params, marginal)
        x0 = params if var is None else self._draw(params, var, generator)
        pred = Prediction(x0, params, params, var)
        if self.extras and callable(getattr(self.corruption, "invert_noise", None)):
            m = marginal if marginal is not None else self.corruption.marginal(t, x_t)
            pred.eps_hat = self.corruption.invert_noise(m, x_t, x0, generator)
            pred.score = self.corruption.score(m, x_t, x0)
        return pred

    def _predict_parts(self, out: Any, x_t: Any, t: Any, generator: torch.Generator | None) -> Prediction:
        """A corruption made of parts (a product): each part's output read as that part's corruption reads it,
        at the part's own time. ``mean`` holds each part's mean, or its draw where q_theta has no mean
        (categorical parts), so that the last step returns data for every part."""
        times = self.corruption.part_times(t)
        preds = {k: d._prediction(out[k], x_t[k], times[k], generator, None, None) for k, d in self._parts.items()}
        return Prediction({k: p.x0_hat for k, p in preds.items()}, {k: p.params for k, p in preds.items()},
                          {k: p.mean if p.mean is not None else p.x0_hat for k, p in preds.items()})

    def _draw(self, mean: torch.Tensor, var: Any, generator: torch.Generator | None) -> torch.Tensor:
        return draw_gaussian(mean, var, self.corruption, generator)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None):
        return self.predict(x_t, t, generator).x0_hat


def _options_for(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` when the family ``family`` takes every one of them as a keyword, else none."""
    import inspect

    from .families import FAMILIES

    cls = FAMILIES.get(family)
    params = inspect.signature(cls).parameters if cls is not None else {}
    return dict(options) if options and all(k in params for k in options) else {}


def draw_gaussian(mean: torch.Tensor, var: Any, corruption: Any, generator: torch.Generator | None) -> torch.Tensor:
    """mean + B^T (sqrt(var) * z), z ~ N(0, I): a draw of N(mean, Sigma) with Sigma = diag(var) in the
    corruption's basis B (``var``: a float or a tensor broadcastable against ``mean`` ``(batch, ...)``)."""
    z = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    std = var ** 0.5 if not isinstance(var, torch.Tensor) else var.clamp_min(0).sqrt().to(mean.dtype)
    from_basis = getattr(corruption, "from_basis", None)
    noise = z * std if from_basis is None else from_basis(z * std)
    return mean + noise
