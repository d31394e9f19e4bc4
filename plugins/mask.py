"""The ``mask`` corruption: absorbing-state (masked) diffusion of tokens (MDLM; Su's "mask model").

Tokens ``LongTensor (batch, length)`` with ids in [0, V); ``[MASK]`` is the extra id V (never a data token).
Noise: u ~ U[0, 1]^length, one uniform per position (float64). With tau(t) the masking probability
(``linear``: tau = t; ``cosine``: tau = 1 - cos(pi t / 2)), tau(0) = 0 and tau(1) = 1:

* ``exact_count=False`` (continuous-time masked diffusion): position l is masked iff u_l < tau(t);
* ``exact_count=True`` (the seed's "mask t of l tokens"): the k = round(tau(t) L) positions with the lowest u.

``noise_posterior`` *samples* u given (x_t, x_0): only the masked set is recoverable, so u_l ~ U[0, tau) on
masked and U[tau, 1] on visible positions (exact_count: the L sorted uniforms, the lowest k dealt to the masked
positions in a random order). ``invert`` is then exactly the absorbing-diffusion ancestral step: each masked
position is revealed with probability (tau_t - tau_s) / tau_t (exact_count: a uniform subset of size k_t - k_s).

Loss (``loss="elbo"``, MDLM: Sahoo et al. 2024 eq. 10; Shi et al. 2024 eq. 5). The continuous-time NELBO is

    -log p(x_0) <= E_{t ~ U(0,1), u} [ tau'(t) / tau(t) * sum_{l masked} -log q_theta(x_0,l | x_t) ],

tight when q_theta is the exact posterior marginal. ``Categorical.loss`` divides the masked sum by L, and
``loss_weight(t) = tau'(t)/tau(t)``, so E[per-sample loss] = NELBO(x_0) / L exactly (t ~ U(0, 1)). With
``exact_count`` and the linear schedule on the discrete grid t = n/L this is the order-agnostic ARM bound
(Hoogeboom et al. 2022): weight L/k for k masked tokens. ``loss="ce"``: plain CE on masked positions.

With ``exact_count`` on any other grid the tau'/tau-weighted loss is a training loss, **not a bound**: on
``Discrete(100)`` with L = 8 its mean is 0.06 nats/token below the true NLL under the exact posterior. The
likelihood udm reports is the ``elbo_masked`` estimator's (``udm.likelihood``, docs/math.md "Likelihoods"),
which scores the chain the time grid defines and is a bound for both masking kinds on every grid.
"""

from __future__ import annotations


import torch

import udm

from ._pixel_mask import PixelMaskCorruption
from ._tokens import SCHEDULES, check_choice, check_vocab, posterior_noise, redraw, select


LOSSES = ("elbo", "ce")


class MaskCorruption(udm.Corruption):
    """Absorbing ``[MASK]`` corruption of tokens (see the module docstring).

    Args:
        vocab_size: number of data tokens V; ``[MASK]`` is id V (the model's embedding needs V + 1 rows).
        schedule: ``linear`` (tau = t) | ``cosine`` (tau = 1 - cos(pi t / 2)).
        exact_count: mask exactly round(tau(t) L) tokens instead of each independently with prob. tau(t).
        loss: ``elbo`` (weight tau'/tau, the MDLM continuous-time bound; with ``exact_count`` a bound only on
            the grid t = n/L, see the module docstring) | ``ce`` (unweighted CE on masks).
    """

    name = "mask"
    data_kind = "tokens"
    family = "categorical"
    #: q(x_0 | x_t) depends on x_t only (the visible tokens), not on t: samplers reuse x0_hat while x_t stays put
    time_invariant_posterior = True

    def __init__(self, vocab_size: int, schedule: str = "linear", exact_count: bool = False,
                 loss: str = "elbo") -> None:
        check_vocab("corruption mask", vocab_size)
        check_choice("corruption mask", "schedule", schedule, SCHEDULES)
        check_choice("corruption mask", "loss", loss, LOSSES)
        self.vocab_size, self.schedule_name, self.exact_count, self.loss = vocab_size, schedule, bool(exact_count), loss
        self.mask_id = vocab_size

    def __repr__(self) -> str:
        return (f"MaskCorruption(vocab_size={self.vocab_size}, schedule={self.schedule_name!r}, "
                f"exact_count={self.exact_count}, loss={self.loss!r})")

    def tau(self, t: torch.Tensor) -> torch.Tensor:
        """Masking probability tau(t) ``(batch,)`` float64."""
        return SCHEDULES[self.schedule_name](torch.as_tensor(t, dtype=torch.float64))[0]

    # --------------------------------------------------------------- contract
    def sample_noise(self, x0, generator):
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)

    def forward(self, x0, eps, t):
        return torch.where(select(eps, self.tau(t).to(x0.device).expand(x0.shape[0]), self.exact_count),
                           torch.full_like(x0, self.mask_id), x0)

    def sample_prior(self, shape, generator, *, device=None, dtype=None):
        """x_1: every position ``[MASK]`` (tau(1) = 1), ``LongTensor shape``."""
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    def noise_posterior(self, x_t, x0, t, generator=None):
        return posterior_noise(x_t == self.mask_id, self.tau(t).to(x_t.device).expand(x_t.shape[0]),
                               self.exact_count, generator)

    def refresh_noise(self, eps, amount, generator):
        """Redraw each u_l with probability ``amount`` (q-invariant; re-masks revealed tokens, as ReMDM)."""
        return redraw(eps, amount, generator)

    def uncorrupted(self, x_t) -> torch.Tensor:
        """Bool ``(batch,)``: rows without ``[MASK]`` (x_0 = x_t, nothing left to predict)."""
        return (x_t != self.mask_id).all(1)

    def masked_count(self, x_t, t, s, generator=None) -> torch.Tensor:
        """How many of x_t's masked positions stay masked at s < t ``(batch,)``: exact_count: round(tau_s L);
        independent: Binomial(m, tau_s / tau_t) for m masked now."""
        m = (x_t == self.mask_id).sum(1)
        tau_t = self.tau(t).to(x_t.device).expand(x_t.shape[0])
        tau_s = self.tau(s).to(x_t.device).expand(x_t.shape[0])
        if self.exact_count:
            return torch.minimum(torch.round(tau_s * x_t.shape[1]).long(), m)
        p = (tau_s / tau_t.clamp_min(1e-300)).clamp(0, 1)
        return torch.binomial(m.double(), p, generator=generator).long()

    # ------------------------------------------------------------------- model
    def to_x0(self, output, x_t, t):
        """Logits ``(B, L, V)``; visible positions are forced to their observed token (x0_hat keeps them)."""
        visible = x_t != self.mask_id
        fixed = torch.full_like(output, float("-inf")).scatter_(-1, x_t.clamp_max(self.vocab_size - 1)[..., None], 0.0)
        return torch.where(visible[..., None], fixed, output)

    def loss_mask(self, x0, x_t):
        return x_t == self.mask_id

    def loss_weight(self, t):
        if self.loss == "ce":
            return None
        tau, dtau = SCHEDULES[self.schedule_name](torch.as_tensor(t, dtype=torch.float64))
        return dtau / tau.clamp_min(1e-12)


@udm.hookimpl
def udm_register_corruptions(register):
    register(MaskCorruption)
    register(PixelMaskCorruption)  # the continuous variant (pixel/patch masks), plugins/_pixel_mask.py
