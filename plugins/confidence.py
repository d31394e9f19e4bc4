"""The ``confidence`` sampler: unmask the most confident positions first (MaskGIT, Chang et al. 2022, §3.2).

For an absorbing corruption (one with ``mask_id`` and the ``masked_count`` capability), each step t -> s:

    x0_hat, logits = D.predict(x_t, t)                        (x0_hat sampled from q_theta)
    c_l = log q_theta(x0_hat_l | x_t) + choice_temperature * t * g_l,  g_l ~ Gumbel(0, 1)   (masked l)
    k   = corruption.masked_count(x_t, t, s)                  (how many stay masked: the schedule tau)
    x_s = x0_hat on the masked positions except the k with the lowest c_l, which stay [MASK]; visible kept.

Ties are broken uniformly at random, so a denoiser without ``predict`` (a point prediction: confidence 1
everywhere) gives the random order of ``invert``; hence with the oracle x0_hat = x_0 the sampler carries
p(x_t | x_0) to p(x_s | x_0) exactly (the conformance marginal check). ``maskgit`` is the preset
``choice_temperature = 4.5`` (MaskGIT's default annealed Gumbel noise on the confidences).
"""

from __future__ import annotations

import torch

import udm
from udm.samplers import Sampling, requires


def _log_confidence(pred: udm.Prediction) -> torch.Tensor:
    """log q_theta(x0_hat | x_t) ``(B, L)`` float64 (0 for point predictions without logits)."""
    if pred.params is None:
        return torch.zeros(pred.x0_hat.shape, dtype=torch.float64, device=pred.x0_hat.device)
    return pred.params.double().log_softmax(-1).gather(-1, pred.x0_hat[..., None])[..., 0]


@requires("masked_count")
def confidence(denoiser, corruption, times, x_init, *, generator=None, callback=None, clamp=False,
               choice_temperature: float = 0.0):
    """Confidence-ordered unmasking (MaskGIT) with the shared sampler signature; returns x_0 ``(B, L)``.

    Args:
        choice_temperature: >= 0; scale of the Gumbel noise added to log-confidences, annealed as t.
    """
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
            logp = _log_confidence(pred)
            masked = x == mask_id
            if choice_temperature > 0:
                u = torch.rand(logp.shape, generator=generator, device=x.device, dtype=torch.float64)
                logp = logp + float(choice_temperature) * run.values[i] * -torch.log(-torch.log(u.clamp_min(1e-300)))
            conf = torch.where(masked, logp, torch.full_like(logp, float("inf")))
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
                             "unmask the most confident positions first (MaskGIT order)"))
    register(udm.SamplerSpec("maskgit", confidence, (), {"choice_temperature": 4.5},
                             "MaskGIT (Chang et al. 2022): confidence order with annealed Gumbel noise 4.5"))
