"""The ``latent`` corruption: a learned forward process, x_t = F_t(E(x_0), eps) with an encoder E and an inner
linear-Gaussian corruption F (docs/math.md, "Learned forward processes"; Diffusion-LM, Li et al. 2022; CDCD,
Dieleman et al. 2022; Plaid, Gulrajani & Hashimoto 2023)::

    corruption: {name: latent, encoder: {name: embedding, dim: 16}, inner: {name: gaussian, schedule: linear}}

Discrete tokens are diffused as Gaussian noise on their embeddings. The states x_t, the network's input and
x0_hat live in the latent space; x0_hat is rounded to tokens (``encoder.round``) only by the last step
(``to_data``), or, with ``rounding: every_step``, snapped to the nearest embedding at every step (Diffusion-LM's
clamping trick). Everything the inner corruption offers is offered here: its linear-Gaussian layer (grid tables,
marginals, noise posterior, closed-form posterior, eta-refresh, multistep weights, variances) is the inner's,
so every sampler of the inner corruption runs unchanged on the latents.

**The loss is a bound on -log p(x_0)** (``loss: elbo``, VDM's continuous-time bound, Kingma et al. 2021 eq. 17,
with the encoder inside it), in nats per data position:

    -log p(x_0) <= E[-log p(x_0 | z_r)] + 1/2 int_{t_r}^1 (-SNR'(t)) E|x0_hat(z_t) - E(x_0)|^2 dt
                   + KL(q(z_1 | x_0) || N(0, s_1^2 I))

with z_t = a_t E(x_0) + s_t eps, SNR = a^2/s^2, the **reconstruction** term at ``recon_time`` t_r (the encoder's
``decode(z_r / a_r, s_r / a_r)``: the exact posterior of each token given its noisy embedding under a uniform
prior), the **diffusion** term (one t per sample, drawn by the corruption itself uniformly in the log-SNR between
t_r and 1 and weighted by the inverse of that density: an unbiased estimate of the integral whose integrand,
SNR |x0_hat - E(x_0)|^2, stays of order one, where a uniform t would weight the few samples near t_r by up to
-SNR' ~ 1e7) and the **prior** term
1/2 SNR(1) |E(x_0)|^2. The reconstruction term keeps the embeddings from collapsing (tokens closer than the
noise at t_r cannot be told apart); the prior term keeps them from blowing up (it grows with |E(x_0)|^2 where
SNR(1) > 0, e.g. the ``linear`` and ``vp`` schedules). ``loss: simple`` is Diffusion-LM's L_simple: the inner
corruption's own loss (its prediction target and weighting, a mean over latent entries) plus the reconstruction
and prior terms per position.

**The logits head** (``prediction: logits``; CDCD's score interpolation): the network outputs V logits per
position and x0_hat_l = sum_v softmax(logits_l)_v e_v (the encoder's ``expect``), exact when the logits are the
per-position posteriors p(x_{0,l} = v | z_t). ``loss: cross_entropy`` trains it with the tokens' cross-entropy
(a mean over positions) at the time type's training times, plus the reconstruction and prior terms per
position: unlike the bound, whose weight vanishes at high noise, it trains the times where the tokens are
decided (benchmarks/results_latent_cpu.md); ``loss: elbo`` is the bound on the head's x0_hat. :meth:`LatentCorruption.nelbo` estimates the bound itself for a trained denoiser,
by importance sampling in the log-SNR.

``mode: joint`` trains the encoder with the network (its parameters reach the optimiser through
``trainable_modules``); ``mode: frozen`` keeps it fixed (a pre-trained table: ``encoder: {name: embedding,
weights: table.safetensors}``).

The inner corruption must be linear-Gaussian with one amplitude pair per time (``gaussian`` with any schedule,
or a chain of such parts): the bound's terms are per latent entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch.nn import functional as F

import udm
from udm.composition import ALL_CAPABILITIES, Composite, linear_gaussian_layer, prefixed, unprefixed
from udm.errors import ConfigError
from udm.losses import per_sample_loss

__all__ = ["LatentCorruption", "LatentBound"]

#: the inner corruption's capabilities a latent corruption passes on (the others are about its own q_theta)
_PASSED = ("noise_posterior", "refresh_noise", "posterior", "schedule", "linear_gaussian", "vector_space", "fit")
#: members of the inner corruption exposed as the latent corruption's own (beyond the linear-Gaussian layer)
_ALSO = ("parameterization", "schedule")
#: points of the log-SNR table the diffusion term's times are drawn from, and its floor where SNR(1) = 0
TABLE_POINTS, LAMBDA_MIN = 4097, -30.0
#: (loss, prediction) pairs that do not fit together, and the fix
_INCOMPATIBLE = {("cross_entropy", "inner"): "prediction: logits (the cross-entropy is on the network's logits)",
                 ("simple", "logits"): "loss: cross_entropy or elbo (simple is the inner corruption's own loss on "
                                       "its own output)"}


@dataclass
class LatentBound:
    """The terms of the bound on -log p(x_0), nats per sequence ``(batch,)`` (module docstring)."""

    reconstruction: torch.Tensor
    diffusion: torch.Tensor
    prior: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.reconstruction + self.diffusion + self.prior


class LatentCorruption(Composite):
    """x_t = F_t(E(x_0), eps) (see the module docstring).

    Args:
        encoder: an encoder plugin (``embedding``), a mapping ``{name: ..., **options}`` or an instance.
        inner: the corruption of the latents (default ``gaussian``): linear-Gaussian, one amplitude pair per time.
        mode: ``joint`` (train the encoder with the network) | ``frozen`` (keep it fixed).
        loss: ``elbo`` (the bound in nats per position) | ``simple`` (the inner loss + reconstruction + prior) |
            ``cross_entropy`` (the tokens' cross-entropy of the logits head + reconstruction + prior).
        recon_time: t_r in (0, 1), where the decoder reads the latent (the inner corruption must be noisy there).
        rounding: ``end`` (x0_hat rounded to tokens by the last step only) | ``every_step`` (snapped to the
            nearest embedding at every step).
        prediction: ``inner`` (the network predicts the inner corruption's target) | ``logits`` (V logits per
            position; x0_hat is the softmax-weighted embedding).
    """

    name = "latent"
    #: a configuration ``udm plugins`` reports
    examples = ({"encoder": {"name": "embedding", "vocab_size": 16, "dim": 16}, "inner": "gaussian"},)
    data_kind = "tokens"  #: the encoder's data kind (set per instance from the encoder; the built-in one: tokens)
    state_kind = "continuous"
    family = "gaussian"

    def __init__(self, encoder: udm.PluginSpec["encoder"], inner: udm.PluginSpec["corruption"] = "gaussian",
                 mode: Literal["joint", "frozen"] = "joint",
                 loss: Literal["elbo", "simple", "cross_entropy"] = "elbo",
                 recon_time: Annotated[float, udm.Interval(gt=0, lt=1)] = 1e-3,
                 rounding: Literal["end", "every_step"] = "end",
                 prediction: Literal["inner", "logits"] = "inner") -> None:
        where = "corruption latent"
        for key, value, allowed in (("mode", mode, ("joint", "frozen")),
                                    ("loss", loss, ("elbo", "simple", "cross_entropy")),
                                    ("rounding", rounding, ("end", "every_step")),
                                    ("prediction", prediction, ("inner", "logits"))):
            if value not in allowed:
                raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}; got {value!r}.")
        fix = _INCOMPATIBLE.get((loss, prediction))
        if fix is not None:
            raise ConfigError(f"{where}: loss and prediction must be compatible; got loss={loss!r} with "
                              f"prediction={prediction!r}. Set {fix}.")
        if isinstance(recon_time, bool) or not isinstance(recon_time, (int, float)) or not 0 < recon_time < 1:
            raise ConfigError(f"{where}: recon_time must be in (0, 1); got {recon_time!r}. E.g. 1e-3.")
        self.encoder = udm.build_plugin("encoder", encoder, where=f"{where}: encoder")
        missing = [m for m in ("encode", "decode", "round", "latent_shape") if not callable(getattr(self.encoder, m, None))]
        if missing or not isinstance(self.encoder, torch.nn.Module):
            raise ConfigError(f"{where}: encoder must be a udm.Encoder (a torch.nn.Module with encode, decode, round, "
                              f"latent_shape); got {type(self.encoder).__name__}"
                              f"{', which lacks ' + ', '.join(missing) if missing else ''}. E.g. encoder: embedding.")
        self.inner = udm.build_plugin("corruption", inner, where=f"{where}: inner")
        self.mode, self.loss, self.recon_time, self.rounding = mode, loss, float(recon_time), rounding
        self.prediction = prediction
        self.data_kind = getattr(self.encoder, "data_kind", "tokens")
        self._check_inner(where)
        if mode == "frozen":
            self.encoder.requires_grad_(False)
        own = set(dir(type(self)))
        for member in (*linear_gaussian_layer(), *_ALSO):
            if member not in own and hasattr(self.inner, member):
                self.expose(member, getattr(self.inner, member))
        if callable(getattr(self.inner, "fit", None)):
            self.expose("fit", self._fit)

    def _check_inner(self, where: str) -> None:
        name = getattr(self.inner, "name", type(self.inner).__name__)
        if getattr(self.inner, "data_kind", "continuous") != "continuous" or \
                "linear_gaussian" not in udm.capabilities(self.inner):
            raise ConfigError(f"{where}: inner must be a linear-Gaussian corruption of continuous data (the bound is "
                              f"per latent entry); got {name!r}. Use gaussian (any schedule).")
        like = torch.zeros(2, *getattr(self.inner, "nominal_shape", (1,)))
        m = self.inner.marginal(torch.tensor([0.5, self.recon_time], dtype=torch.float64), like)
        if m.a64[0].numel() != 1 or m.s64[0].numel() != 1:
            raise ConfigError(f"{where}: inner must have one amplitude pair per time (isotropic noise on the latents); "
                              f"got {name!r} with per-coefficient amplitudes. Use gaussian.")
        if not (float(m.a64[1]) > 0 and float(m.s64[1]) > 0):
            raise ConfigError(f"{where}: recon_time must be a time where the inner corruption keeps signal and adds "
                              f"noise (a > 0, s > 0); got recon_time={self.recon_time} with a = {float(m.a64[1]):.3g}, "
                              f"s = {float(m.s64[1]):.3g} for {name!r}. Raise recon_time (e.g. 1e-3).")

    def __repr__(self) -> str:
        return (f"LatentCorruption(encoder={self.encoder!r}, inner={self.inner!r}, mode={self.mode!r}, "
                f"loss={self.loss!r})")

    # ------------------------------------------------------------ composition
    def named_parts(self) -> dict[str, Any]:
        return {"inner": self.inner}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The encoder (frozen: its parameters do not require gradients, so only its device follows the trainer)."""
        return {"encoder": self.encoder, **super().trainable_modules()}

    def capabilities(self) -> frozenset[str]:
        have = udm.capabilities(self.inner)
        return frozenset(c for c in _PASSED if c in have)

    def capability_notes(self) -> dict[str, str]:
        inner = getattr(self.inner, "name", type(self.inner).__name__)
        own = "q_theta of a latent corruption is the inner corruption's Gaussian over latents"
        return {c: own if c in ("masked_count", "nll", "sample_x0") else f"the inner corruption {inner!r} lacks it"
                for c in ALL_CAPABILITIES}

    def state_shape(self, data_shape: list[int]) -> list[int]:
        """The per-example shape the network sees (the latent's) for data of per-example ``data_shape``."""
        return list(self.encoder.latent_shape((1, *data_shape))[1:])

    # ----------------------------------------------------------------- latents
    def _enc(self, x: torch.Tensor) -> Any:
        """The encoder, on ``x``'s device (moved there once if it is elsewhere)."""
        p = next(self.encoder.parameters(), None)
        if p is not None and p.device != x.device:
            self.encoder.to(x.device)
        return self.encoder

    def latent_of(self, x: Any) -> torch.Tensor:
        """E(x) for data (integer tokens), ``x`` itself for a latent (what samplers pass as x0_hat)."""
        enc = self._enc(x)
        return enc.encode(x) if enc.is_data(x) else x

    def to_data(self, z: Any) -> Any:
        """The data a latent stands for (the last step's rounding); data is returned as it is."""
        enc = self._enc(z)
        return z if enc.is_data(z) else enc.round(z)

    def _fit(self, data: Any) -> None:
        with torch.no_grad():
            self.inner.fit(self.latent_of(data))

    # ---------------------------------------------------------------- contract
    def sample_noise(self, x0: Any, generator: torch.Generator | None) -> torch.Tensor:
        if self._enc(x0).is_data(x0):
            p = next(self.encoder.parameters(), None)
            like = torch.empty(self.encoder.latent_shape(tuple(x0.shape)), device=x0.device,
                               dtype=p.dtype if p is not None else torch.float32)
            return self.inner.sample_noise(like, generator)
        return self.inner.sample_noise(x0, generator)

    def forward(self, x0: Any, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(self.latent_of(x0), eps, t)

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_1 from the inner corruption's prior, on the latent shape of ``shape`` (data or latent)."""
        floats = dtype if dtype is not None and dtype.is_floating_point else None
        return self.inner.sample_prior(self.encoder.latent_shape(tuple(shape)), generator, device=device, dtype=floats)

    def noise_posterior(self, x_t, x0, t, generator=None) -> torch.Tensor:
        return self.inner.noise_posterior(x_t, self.latent_of(x0), t, generator)

    def refresh_noise(self, eps, amount, generator) -> torch.Tensor:
        return self.inner.refresh_noise(eps, amount, generator)

    def posterior(self, x_t, x0, t, s, generator) -> torch.Tensor:
        return self.inner.posterior(x_t, self.latent_of(x0), t, s, generator)

    def target(self, x0, eps, t) -> torch.Tensor:
        return self.inner.target(self.latent_of(x0), eps, t)

    def latent_x0(self, output, x_t, t, marginal=None) -> torch.Tensor:
        """x0_hat in the latent space ``(batch, *latent_shape)``, never rounded: the inner corruption's conversion
        of the network output, or, with ``prediction: logits``, the mean embedding under the token probabilities,
        sum_v softmax(output)_v E(v) (``output`` ``(batch, length, V)``; CDCD's score interpolation)."""
        if self.prediction == "logits":
            return self._enc(output).expect(torch.softmax(output.float(), -1)).to(x_t.dtype)
        if marginal is None:
            return self.inner.to_x0(output, x_t, t)
        return self.inner.to_x0(output, x_t, t, marginal=marginal)

    def to_x0(self, output, x_t, t, marginal=None) -> torch.Tensor:
        """:meth:`latent_x0`, snapped to the nearest embedding when ``rounding`` is ``every_step``."""
        z = self.latent_x0(output, x_t, t, marginal)
        if self.rounding == "every_step":
            enc = self._enc(z)
            z = enc.encode(enc.round(z)).to(z.dtype)
        return z

    # -------------------------------------------------------------- the bound
    def _amplitudes(self, t: Any, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(a, s, a', s') float64 ``(n, 1, ..., 1)`` of the inner corruption at times ``t``."""
        m = self.inner.marginal(torch.as_tensor(t, dtype=torch.float64).reshape(-1).to(like.device), like)
        return m.a64, m.s64, m.da64, m.ds64

    def _data(self, x0: Any, z0: torch.Tensor) -> torch.Tensor:
        return x0 if self._enc(z0).is_data(x0) else self.encoder.round(z0)

    def reconstruction(self, x0: Any, z0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """-log p(x_0 | z_r) ``(batch,)`` nats: the decoder at z_r = a_r E(x_0) + s_r eps, t_r = ``recon_time``."""
        a, s, _, _ = self._amplitudes([self.recon_time], z0)
        a, s = float(a.reshape(-1)[0]), float(s.reshape(-1)[0])
        logits = self._enc(z0).decode((a * z0 + s * eps) / a, s / a)
        data = self._data(x0, z0)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), data.reshape(-1), reduction="none")
        return ce.view(data.shape[0], -1).sum(1)

    def prior_term(self, z0: torch.Tensor) -> torch.Tensor:
        """KL(q(z_1 | x_0) || N(0, s_1^2 I)) = SNR(1) |E(x_0)|^2 / 2 ``(batch,)`` nats (the prior's variance is
        the inner corruption's s_1^2)."""
        a, s, _, _ = self._amplitudes([1.0], z0)
        snr = float((a * a / (s * s)).reshape(-1)[0])
        return 0.5 * snr * z0.double().pow(2).reshape(z0.shape[0], -1).sum(1).to(z0.dtype)

    def snr_slope(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """-d SNR / dt ``(n, 1, ..., 1)`` float64 at times ``t`` (SNR = a^2 / s^2; >= 0 for a valid schedule)."""
        a, s, da, ds = self._amplitudes(t, like)
        return -2 * a * (da * s - a * ds) / s**3

    # ------------------------------------------- the diffusion term's times
    def _lambda_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, lambda(t)) on a fine grid of [t_r, 1] (float64, CPU; lambda decreasing, clipped below at
        ``LAMBDA_MIN`` where SNR(1) = 0); computed once."""
        if self.__dict__.get("_table") is None:
            t = torch.linspace(self.recon_time, 1.0, TABLE_POINTS, dtype=torch.float64)
            self._table = (t, self._log_snr(t, torch.zeros(1, 1)).clamp_min(LAMBDA_MIN))
        return self._table

    def times_of(self, u: torch.Tensor) -> torch.Tensor:
        """Times in [t_r, 1] for uniforms ``u`` ``(n,)``: uniform in the log-SNR (piecewise linear between the
        table's points), the importance sampling of the diffusion term that :meth:`training_loss` weights for."""
        t, lam = self._lambda_table()
        target = lam[-1] + (lam[0] - lam[-1]) * u.double().cpu()
        i = torch.searchsorted(-lam, -target).clamp(1, len(t) - 1)
        w = (lam[i - 1] - target) / (lam[i - 1] - lam[i])
        return t[i - 1] + w.clamp(0, 1) * (t[i] - t[i - 1])

    def diffusion_weight(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """w(t) ``(n, 1, ..., 1)`` float64 with E_u[w(t) |x0_hat - E(x_0)|^2] the diffusion term when t = times_of(u),
        u ~ U(0, 1): 1/2 (-SNR'(t)) / p(t), p(t) = |lambda~'(t)| / (lambda(t_r) - lambda(1)) the density of those
        times (lambda~: the table's piecewise-linear log-SNR); 0 outside [t_r, 1]."""
        grid, lam = self._lambda_table()
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        i = torch.searchsorted(grid, t.cpu()).clamp(1, len(grid) - 1)
        slope = (lam[i - 1] - lam[i]) / (grid[i] - grid[i - 1])
        inside = (t.cpu() >= self.recon_time) & (t.cpu() <= 1)
        w = torch.where(inside, 0.5 * (lam[0] - lam[-1]) / slope, torch.zeros_like(slope)).to(like.device)
        return w.reshape(-1, *([1] * (like.ndim - 1))) * self.snr_slope(t, like)

    def train_times(self, time_type: Any, batch: int, generator: torch.Generator | None, device: Any = None) -> Any:
        """Training times: for ``loss: elbo`` uniform in the log-SNR over [t_r, 1] (:meth:`times_of`; the time type
        then only sets the sampling grids), which keeps the bound's estimate of low variance; else the time type's."""
        if self.loss != "elbo":
            return time_type.sample_train(batch, generator, device=device)
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        return self.times_of(u).to(u.device)

    def training_loss(self, output, x0, eps, x_t, t) -> torch.Tensor:
        """Per-sample loss ``(batch,)`` in nats per data position (module docstring): reconstruction + diffusion
        (at times drawn by :meth:`train_times`) + prior for ``elbo``; the inner loss + (reconstruction + prior)
        per position for ``simple``; the cross-entropy of the logits ``output`` against the tokens, a mean over
        positions, + (reconstruction + prior) per position for ``cross_entropy``."""
        z0 = self.latent_of(x0)
        data = self._data(x0, z0)
        positions = data[0].numel()
        extra = self.reconstruction(x0, z0, eps) + self.prior_term(z0)
        if self.loss == "simple":
            return per_sample_loss(self.inner, output, z0, eps, x_t, t) + extra / positions
        if self.loss == "cross_entropy":
            ce = F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), data.reshape(-1), reduction="none")
            return ce.view(data.shape[0], -1).mean(1).to(z0.dtype) + extra / positions
        z0_hat = self.latent_x0(output, x_t, t)
        t = torch.as_tensor(t, dtype=torch.float64).expand(z0.shape[0])
        err = (z0_hat - z0).pow(2) * self.diffusion_weight(t, z0).to(z0.dtype)
        return (err.reshape(z0.shape[0], -1).sum(1) + extra) / positions

    @torch.no_grad()
    def nelbo(self, denoiser: Any, x0: torch.Tensor, generator: torch.Generator | None = None, *,
              times: int = 16) -> LatentBound:
        """The bound on -log p(x_0) for each sequence of ``x0`` (nats, ``(batch,)`` per term) with ``denoiser``
        ``(z_t, t, generator) -> x0_hat`` (a :class:`udm.Denoiser` of the trained network). The diffusion term is
        the mean over ``times`` stratified times per sequence, uniform in the log-SNR (:meth:`times_of`), of the
        weighted error (:meth:`diffusion_weight`). Where SNR(1) = 0 the integral starts at lambda = ``LAMBDA_MIN``
        (the rest is below e^LAMBDA_MIN |E(x_0)|^2 / 2)."""
        z0 = self.latent_of(x0)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        rec, prior = self.reconstruction(x0, z0, eps), self.prior_term(z0)
        b = z0.shape[0]
        jitter = torch.rand(b, times, generator=generator, dtype=torch.float64, device=z0.device).cpu()
        t = self.times_of(((torch.arange(times, dtype=torch.float64) + jitter) / times).reshape(-1)).to(z0.device)
        zz = z0.repeat_interleave(times, 0)
        noise = torch.randn(zz.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z_hat = denoiser(self.inner.forward(zz, noise, t), t, generator)
        err = (z_hat.double() - zz.double()).pow(2) * self.diffusion_weight(t, zz)
        diffusion = err.reshape(b, times, -1).sum(-1).mean(1)
        return LatentBound(rec.double(), diffusion, prior.double())

    def _log_snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a, s, _, _ = self._amplitudes(t, like[:1])
        return (2 * (torch.log(a) - torch.log(s))).reshape(-1).cpu()

    @torch.no_grad()
    def rounding_accuracy(self, denoiser: Any, x0: torch.Tensor, t: float,
                          generator: torch.Generator | None = None) -> float:
        """The fraction of tokens of ``x0`` that ``round(x0_hat(z_t))`` recovers at time ``t``."""
        z0 = self.latent_of(x0)
        tt = torch.full((z0.shape[0],), float(t), dtype=torch.float64, device=z0.device)
        z_t = self.inner.forward(z0, self.inner.sample_noise(z0, generator), tt)
        tokens = self.to_data(denoiser(z_t, tt, generator))
        return float((tokens == self._data(x0, z0)).double().mean())

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (``encoder.*``) and the inner corruption's statistics (``inner.*``)."""
        return {**prefixed("encoder", {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}),
                **prefixed("inner", self.inner.state_dict())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(k for k in state if not k.startswith(("encoder.", "inner.")))
        if unknown:
            raise ValueError(f"corruption latent: state keys must start with encoder. or inner.; got {unknown}.")
        own = unprefixed("encoder", state)
        if own:
            self.encoder.load_state_dict(own)
        self.inner.load_state_dict(unprefixed("inner", state))


@udm.hookimpl
def udm_register_corruptions(register):
    register(LatentCorruption)

