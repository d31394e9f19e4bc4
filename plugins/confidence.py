"""The ``confidence`` sampler: unmask the most confident positions first (MaskGIT, Chang et al. 2022, §3.2).

For an absorbing corruption (one with ``mask_id`` and the ``masked_count`` capability), each step t -> s:

    x0_hat, logits = D.predict(x_t, t)                        (x0_hat sampled from q_theta)
    c_l = log score_l + temperature_t * g_l,  g_l ~ Gumbel(0, 1)             (masked positions l)
    k   = corruption.masked_count(x_t, t, s)                  (how many stay masked: the schedule tau)
    x_s = x0_hat on the masked positions except the k with the lowest c_l, which stay [MASK]; visible kept.

Which score (docs/explanation.md, "Confidence order and its bias"):

* ``by="max"`` (the default): score_l = max_v q_theta(v | x_t), which does not depend on the drawn x0_hat.
  The order of revealing then depends only on what is already revealed, so with an exact denoiser and one
  position revealed per step the sampler draws exactly from the data law (chain rule in an adaptive order);
  with several per step its error is the parallel-decoding error, which falls with more steps.
* ``by="drawn"``: score_l = q_theta(x0_hat_l | x_t), MaskGIT's confidence of the drawn token. The choice
  depends on the draws, so it favours likely values: mode-seeking and biased at any number of steps, even
  with an exact denoiser (higher precision, lower diversity).

``choice_temperature`` scales the Gumbel noise: 1 (the default) picks positions by sampling without
replacement in proportion to the score (Gumbel top-k), 0 is greedy; ``anneal=True`` multiplies it by t
(MaskGIT's schedule). Ties are broken uniformly at random, so a denoiser without ``predict`` (a point
prediction: score 1 everywhere) gives the random order of ``invert``; hence with the oracle x0_hat = x_0 the
sampler carries p(x_t | x_0) to p(x_s | x_0) exactly (the conformance marginal check). ``maskgit`` is the
preset ``by="drawn"``, ``choice_temperature=4.5``, ``anneal=True`` (the paper's setting).
"""

from __future__ import annotations

from typing import Literal

import torch

import udm
from udm.samplers import Sampling, requires


def _log_score(pred: udm.Prediction, by: str) -> torch.Tensor:
    """log score ``(B, L)`` float64 (0 for point predictions without logits)."""
    if pred.params is None:
        return torch.zeros(pred.x0_hat.shape, dtype=torch.float64, device=pred.x0_hat.device)
    logp = pred.params.double().log_softmax(-1)
    if by == "max":
        return logp.max(-1).values
    return logp.gather(-1, pred.x0_hat[..., None])[..., 0]


def _gumbel(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp_min(1e-300)))


@requires("masked_count")
def confidence(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
               by: Literal["max", "drawn"] = "max", choice_temperature: float = 1.0, anneal: bool = False):
    """Confidence-ordered unmasking with the shared sampler signature; returns x_0 ``(B, L)``.

    Args:
        by: ``max`` (calibrated: the largest probability at the position) or ``drawn`` (MaskGIT: the
            probability of the drawn token; mode-seeking, biased).
        choice_temperature: >= 0; scale of the Gumbel noise on the log-scores (1: sampling without
            replacement in proportion to the score; 0: greedy).
        anneal: multiply the temperature by t (MaskGIT).
    """
    if by not in ("max", "drawn"):
        raise udm.ConfigError(f"sampler 'confidence': by must be one of max, drawn; got {by!r}. "
                              f"Use max for the calibrated order, drawn for MaskGIT's.")
    if not float(choice_temperature) >= 0:
        raise udm.ConfigError(f"sampler 'confidence': choice_temperature must be >= 0; got {choice_temperature!r}. "
                              f"Use 0 for pure confidence order.")
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x, mask_id = x_init, corruption.mask_id
    for i in run:
        pred = run.predict(x, i)
        if run.last(i):
            x = run.final(pred)
        else:
            t, s = run.points[i].t, run.points[i + 1].t
            score = _log_score(pred, by)
            masked = x == mask_id
            temperature = float(choice_temperature) * (run.values[i] if anneal else 1.0)
            if temperature > 0:
                score = score + temperature * _gumbel(score.shape, generator, x.device)
            conf = torch.where(masked, score, torch.full_like(score, float("inf")))
            # random tie-break: shuffle, then a stable sort by confidence
            perm = torch.rand(conf.shape, generator=generator, device=x.device).argsort(1)
            order = perm.gather(1, conf.gather(1, perm).sort(dim=1, stable=True).indices)
            rank = order.argsort(1)
            keep = corruption.masked_count(x, t, s, generator)
            stay = rank < keep[:, None]
            x = torch.where(stay, torch.full_like(x, mask_id), torch.where(masked, pred.x0_hat, x))
        run.report(i, x, pred)
    return x


@udm.hookimpl
def udm_register_samplers(register):
    register(udm.SamplerSpec("confidence", confidence, (), {},
                             "unmask confident positions first (calibrated: max probability, Gumbel top-k)"))
    register(udm.SamplerSpec("maskgit", confidence, (), {"by": "drawn", "choice_temperature": 4.5, "anneal": True},
                             "MaskGIT (Chang et al. 2022): drawn-token confidence, annealed Gumbel 4.5 "
                             "(mode-seeking: biased even with an exact denoiser)"))
