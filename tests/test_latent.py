"""The ``latent`` corruption (issue 14): x_t = F_t(E(x_0), eps) with a learned encoder (Diffusion-LM, Plaid).

Checked against an exact oracle: for token sequences from a small Markov chain (all V^L sequences enumerable),
E[E(x_0) | z_t] is a finite sum, so the bound on -log p(x_0) it gives must lie between the entropy H(X) and
H(X) + the prior term (it equals H + KL(q(z_1) || p(z_1)) + the decoder's gap, both small here), for the
Monte-Carlo estimator :meth:`nelbo` and for the training loss itself. Every sampler of the inner corruption runs
on the latents and rounds to tokens only at the end; the encoder trains in joint mode and not in frozen mode.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.plugins.embedding import EmbeddingEncoder
from udm.plugins.latent import LatentCorruption
from udm.testing import MarkovChain, assert_conforms

CHAIN = MarkovChain.random(vocab=3, length=4, sharpness=2.0, seed=3)
TABLE = torch.tensor([[1.5, 0.0], [-0.75, 1.3], [-0.75, -1.3]])  # three well separated embeddings (dim 2)


def _entropy(chain: MarkovChain) -> float:
    p = chain.probs()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def _states(chain: MarkovChain) -> torch.Tensor:
    """Every sequence ``(V^L, L)`` in the order of ``chain.probs()``."""
    idx = torch.arange(chain.vocab_size ** chain.length)
    powers = chain.vocab_size ** torch.arange(chain.length - 1, -1, -1)
    return (idx[:, None] // powers) % chain.vocab_size


class LatentOracle:
    """The exact E[E(x_0) | z_t] for z_t = a_t E(x_0) + s_t eps under the chain's law (a finite sum)."""

    def __init__(self, chain: MarkovChain, latent: LatentCorruption) -> None:
        self.latent, self.logp = latent, chain.probs().log()
        self.z = latent.encoder.encode(_states(chain)).detach().double()  # (S, L, d)

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        m = self.latent.inner.marginal(t, z_t)
        a, s = m.a64.reshape(-1, 1, 1, 1), m.s64.reshape(-1, 1, 1, 1)
        d2 = (z_t.double()[:, None] - a * self.z[None]).pow(2).sum((2, 3))  # (B, S)
        w = (self.logp[None] - d2 / (2 * s.reshape(-1, 1) ** 2)).softmax(1)
        return (w @ self.z.reshape(len(self.z), -1)).reshape(z_t.shape).to(z_t.dtype)


def _latent(schedule="linear", **kw) -> LatentCorruption:
    enc = EmbeddingEncoder(vocab_size=3, dim=2)
    with torch.no_grad():
        enc.weight.copy_(TABLE)
    return udm.registry().create("corruption", "latent", encoder=enc, mode="frozen",
                                 inner={"name": "gaussian", "schedule": schedule, "prediction": "x0"}, **kw)


SCHEDULES = ["linear", {"name": "vp", "beta_max": 4.0}]  # SNR(1) = 4e-5 (tight) and 0.11 (a prior term of ~0.4)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "vp"])
def test_the_bound_of_the_exact_denoiser_lies_between_the_entropy_and_entropy_plus_the_prior_term(schedule):
    latent = _latent(schedule)
    x0 = CHAIN.sample(3000, torch.Generator().manual_seed(0))
    bound = latent.nelbo(LatentOracle(CHAIN, latent), x0, torch.Generator().manual_seed(1), times=8)
    total, n = bound.total, len(x0)
    mean, se = float(total.mean()), float(total.std() / math.sqrt(n))
    h, prior = _entropy(CHAIN), float(bound.prior.mean())
    assert float(bound.reconstruction.mean()) < 1e-6  # embeddings 2.6 apart, noise 0.01 at t_r: exact decoding
    assert h - 4 * se <= mean <= h + prior + 4 * se, (mean, se, h, prior)
    if prior > 0.1:  # the prior term matters here: dropping it would put the bound below the entropy
        assert mean - prior < h - 4 * se - 0.05 or mean > h + 0.05


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["linear", "vp"])
def test_the_training_loss_is_the_same_bound_in_nats_per_position(schedule):
    """E over the corruption's training times (uniform in the log-SNR) and eps of the per-position training loss
    (the exact denoiser's output as the x0 target the network would predict) times L is the bound: the loss is a
    valid ELBO, not a surrogate."""
    latent = _latent(schedule)
    oracle = LatentOracle(CHAIN, latent)
    g = torch.Generator().manual_seed(2)
    x0 = CHAIN.sample(6000, g)
    t = udm.time.train_times(latent, udm.registry().create("time", "discrete"), len(x0), g)
    assert float(t.min()) >= latent.recon_time and not bool((t * 1000 == (t * 1000).round()).all())  # its own times
    eps = latent.sample_noise(x0, g)
    x_t = latent.forward(x0, eps, t)
    per = latent.training_loss(oracle(x_t, t), x0, eps, x_t, t) * CHAIN.length
    assert float(latent.diffusion_weight(torch.tensor([1e-4]), x0[:1, :, None].double())) == 0.0
    mean, se = float(per.mean()), float(per.std() / math.sqrt(len(per)))
    ref = latent.nelbo(oracle, x0[:3000], torch.Generator().manual_seed(3), times=8).total
    assert abs(mean - float(ref.mean())) < 4 * math.hypot(se, float(ref.std()) / math.sqrt(3000)), (mean, ref.mean())
    assert mean >= _entropy(CHAIN) - 4 * se


def test_rounding_recovers_every_token_as_t_goes_to_zero():
    latent = _latent()
    oracle = LatentOracle(CHAIN, latent)
    x0 = CHAIN.sample(2000, torch.Generator().manual_seed(4))
    acc = {t: latent.rounding_accuracy(oracle, x0, t, torch.Generator().manual_seed(5)) for t in (1e-3, 0.3, 0.9)}
    assert acc[1e-3] == 1.0 and acc[0.9] < acc[0.3] < 1.0, acc


@pytest.mark.parametrize("sampler, steps", [("ddpm", 50), ("ddim", 50), ("heun", 20), ("posterior", 50)])
def test_samplers_of_the_inner_corruption_reach_the_law_and_round_only_at_the_end(reg, sampler, steps):
    """With the exact posterior mean, every rule of the inner Gaussian converges to the data law as steps grow:
    the TV of 2000 rounded samples to the chain's law is within the noise floor of 2000 true draws (+ 0.03 for
    the discretisation). Intermediate states are latents; only the last step returns tokens."""
    latent = _latent()
    seen = []
    x = udm.sample(LatentOracle(CHAIN, latent), latent, reg.create("time", "continuous"), shape=(2000, 4),
                   sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(6), registry=reg,
                   callback=lambda s: seen.append((s.x.dtype, s.x0_hat.dtype)))
    assert x.dtype == torch.long and x.shape == (2000, 4)
    assert all(d == (torch.float32, torch.float32) for d in seen[:-1]) and seen[-1][0] == torch.long
    floor, spread = CHAIN.tv_floor(2000)
    print(sampler, CHAIN.tv(x), floor, spread)
    assert CHAIN.tv(x) < floor + 3 * spread + 0.03, (CHAIN.tv(x), floor)


def test_the_latent_corruption_offers_the_inner_corruptions_samplers_and_passes_the_kit(reg):
    latent = _latent()
    assert udm.supported_samplers(latent, reg) == udm.supported_samplers(reg.create("corruption", "gaussian"), reg)
    assert callable(latent.grid_table) and latent.basis is latent.inner.basis  # the linear-Gaussian layer is the inner's
    z0 = latent.latent_of(CHAIN.sample(1, torch.Generator().manual_seed(7)))
    # heun stands for the other ODE solvers; the reverse-SDE samplers (weak order 1) need far finer grids, and
    # tests/test_sde.py runs the kit on them for gaussian, whose linear-Gaussian layer the latent one is
    sde = ("sde", "euler_maruyama", "reverse_diffusion", "edm", "edm_stochastic")
    names = [s for s in udm.supported_samplers(latent, reg) if s not in ("euler", "rk4", "ode", *sde)]
    report = assert_conforms(latent, z0, registry=reg, n=1500, samplers=names, fine_steps=20,
                             time_type=reg.create("time", "continuous"))
    assert set(report.samplers) == set(names) and {"ddim", "ddpm", "heun", "posterior"} <= set(names)


def test_every_step_rounding_snaps_x0_hat_to_an_embedding():
    latent = _latent(rounding="every_step")
    z_t = torch.randn(5, 4, 2, generator=torch.Generator().manual_seed(8))
    t = torch.full((5,), 0.5, dtype=torch.float64)
    z = latent.to_x0(z_t, z_t, t)  # the network output as the x0 prediction
    d = (z[..., None, :] - TABLE).norm(dim=-1).min(-1).values
    assert float(d.max()) < 1e-6


def _tiny(mode: str):
    reg = udm.registry()
    latent = reg.create("corruption", "latent", encoder={"name": "embedding", "vocab_size": 3, "dim": 4}, mode=mode)
    net = reg.create("model", "mlp", data_shape=latent.state_shape([4]), width=16, depth=1)
    return latent, net, reg.create("time", "continuous")


@pytest.mark.parametrize("mode", ["joint", "frozen"])
def test_the_encoder_trains_in_joint_mode_only(mode):
    latent, net, time = _tiny(mode)
    before = latent.encoder.weight.detach().clone()
    trainer = udm.Trainer(net, latent, time, lr=1e-2, ema=0)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert (id(latent.encoder.weight) in optimised) == (mode == "joint")
    trainer.fit(CHAIN.sample(256, torch.Generator().manual_seed(9)), steps=5, batch_size=32)
    moved = float((latent.encoder.weight.detach() - before).abs().max())
    assert (moved > 1e-4) if mode == "joint" else moved == 0.0


def test_the_encoder_is_saved_with_the_corruption_state():
    latent, _, _ = _tiny("joint")
    with torch.no_grad():
        latent.encoder.weight.add_(1.0)
    state = latent.state_dict()
    assert set(state) == {"encoder.weight"}
    other, _, _ = _tiny("joint")
    other.load_state_dict(state)
    torch.testing.assert_close(other.encoder.weight, latent.encoder.weight)


def test_a_pretrained_table_is_read_from_a_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"table": TABLE}, tmp_path / "table.safetensors")
    enc = udm.registry().create("encoder", "embedding", vocab_size=3, dim=2, weights=str(tmp_path / "table.safetensors"))
    torch.testing.assert_close(enc.table(), TABLE)
    with pytest.raises(ConfigError, match=r"encoder embedding: weights must be a float table of shape \(4, 2\)"):
        udm.registry().create("encoder", "embedding", vocab_size=4, dim=2, weights=str(tmp_path / "table.safetensors"))


class LateNoise(udm.Schedule):
    """No noise before t = 1/2 (alpha = 1, sigma = max(t - 1/2, 0)): nothing to decode from at t_r."""

    name = "late"

    def amplitudes(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.ones_like(t), (t - 0.5).clamp_min(0)


def test_bad_latent_corruptions_are_clear_errors(reg):
    enc = {"name": "embedding", "vocab_size": 3}
    with pytest.raises(ConfigError, match=r"corruption latent: inner must be a linear-Gaussian corruption of "
                                          r"continuous data \(the bound is per latent entry\); got 'mask_pixels'"):
        reg.create("corruption", "latent", encoder=enc, inner="mask_pixels")
    with pytest.raises(ConfigError, match=r"corruption latent: inner must have one amplitude pair per time "
                                          r"\(isotropic noise on the latents\); got 'blur'"):
        reg.create("corruption", "latent", encoder=enc, inner="blur")
    with pytest.raises(ConfigError, match=r"corruption latent: encoder must be a udm.Encoder \(a torch.nn.Module with "
                                          r"encode, decode, round, latent_shape\); got Linear, which lacks encode"):
        reg.create("corruption", "latent", encoder=torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"corruption latent: recon_time must be a time where the inner corruption "
                                          r"keeps signal and adds noise"):
        reg.create("corruption", "latent", encoder=enc, inner={"name": "gaussian", "schedule": LateNoise(),
                                                                "prediction": "x0"})
    with pytest.raises(ConfigError, match=r"encoder embedding: shape must be \(batch, length\) for tokens"):
        reg.create("corruption", "latent", encoder=enc).sample_prior((2, 3, 4, 5), None)


def test_a_variance_source_and_the_grid_tables_of_the_inner_corruption_apply(reg):
    """q_theta with a variance (Analytic-DPM) and the per-grid coefficient tables run on the latent corruption as on
    its inner Gaussian: the same draws, step by step, given the same network output and generator."""
    latent, net, time = _tiny("frozen")
    gauss = latent.inner
    table = udm.VarianceTable([0.0, 0.5, 1.0], [0.0, 0.01, 0.04], interpolate=True)
    z1 = latent.sample_prior((6, 4), torch.Generator().manual_seed(11))
    run = udm.samplers.Sampling(udm.Denoiser(net, latent, time), latent, time.grid(5), z1)
    assert run.linear_gaussian and run.table is not None  # the fast path: coefficients of the whole grid at once
    seen: list = []
    got = udm.sample(net, latent, time, x_init=z1, shape=(6, 4), sampler="ddpm", steps=5, variance=table,
                     generator=torch.Generator().manual_seed(12), callback=lambda s: seen.append(s.x0_hat))
    plain: list = []
    last = udm.sample(net, gauss, time, x_init=z1, shape=(6, 4, 4), sampler="ddpm", steps=5, variance=table,
                      generator=torch.Generator().manual_seed(12), callback=lambda s: plain.append(s.x0_hat))
    for a, b in zip(seen, plain):
        torch.testing.assert_close(a, b)
    assert len(seen) == 5 and torch.equal(got, latent.to_data(last))  # the mean of the last step, rounded


# ------------------------------------------------------------------ the logits head (prediction: logits)
def _oracle_logits(oracle: LatentOracle, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p(x0_l = v | z_t) ``(B, L, V)``: the exact per-position token posteriors of the chain (a finite sum)."""
    m = oracle.latent.inner.marginal(t, z_t)
    a, s = m.a64.reshape(-1, 1, 1, 1), m.s64.reshape(-1, 1, 1, 1)
    d2 = (z_t.double()[:, None] - a * oracle.z[None]).pow(2).sum((2, 3))
    w = (oracle.logp[None] - d2 / (2 * s.reshape(-1, 1) ** 2)).softmax(1)  # (B, S)
    onehot = torch.nn.functional.one_hot(_states(CHAIN), CHAIN.vocab_size).double()  # (S, L, V)
    return torch.einsum("bs,slv->blv", w, onehot).clamp_min(1e-300).log()


def test_the_logits_head_gives_the_softmax_weighted_embedding_and_the_exact_denoiser_from_exact_logits():
    """x0_hat = sum_v softmax(logits)_v e_v (checked entry by entry); with the exact per-position posteriors as
    logits it is the exact E[E(x_0) | z_t] (the posterior mean of a per-token embedding only needs the per-position
    marginals), so the logits head can represent the exact denoiser."""
    latent = _latent(loss="cross_entropy", prediction="logits")
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(5, 4, 3, generator=g) * 3
    z_t, t = torch.randn(5, 4, 2, generator=g), torch.full((5,), 0.4, dtype=torch.float64)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    by_hand = sum(p[..., v, None] * TABLE[v] for v in range(3))
    torch.testing.assert_close(latent.to_x0(logits, z_t, t), by_hand)
    oracle = LatentOracle(CHAIN, latent)
    x0 = CHAIN.sample(64, g)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    z_t = latent.forward(x0, latent.sample_noise(x0, g), t)
    torch.testing.assert_close(latent.to_x0(_oracle_logits(oracle, z_t, t).float(), z_t, t), oracle(z_t, t))


def test_the_cross_entropy_loss_is_the_mean_token_cross_entropy_plus_reconstruction_and_prior_per_position():
    latent = _latent(schedule={"name": "vp", "beta_max": 4.0}, loss="cross_entropy", prediction="logits")
    g = torch.Generator().manual_seed(14)
    x0 = CHAIN.sample(8, g)
    eps = latent.sample_noise(x0, g)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    x_t = latent.forward(x0, eps, t)
    logits = torch.randn(8, 4, 3, generator=g)
    ce = torch.stack([sum(torch.logsumexp(logits[b, l], 0) - logits[b, l, x0[b, l]] for l in range(4)) / 4
                      for b in range(8)])
    z0 = latent.latent_of(x0)
    prior = 0.5 * float(latent.inner.log_snr(latent.inner.marginal(1.0, z0)).exp()) * z0.pow(2).sum((1, 2))
    assert float(prior.min()) > 0.1  # vp with beta_max 4: the prior term is part of what is checked
    extra = (latent.reconstruction(x0, z0, eps) + prior) / 4
    torch.testing.assert_close(latent.training_loss(logits, x0, eps, x_t, t), ce + extra, rtol=1e-5, atol=1e-6)


def test_the_bound_with_the_logits_head_is_the_bound_of_its_x0_hat():
    """loss: elbo with prediction: logits is the same bound, on x0_hat = the softmax-weighted embedding: with the
    exact posteriors as logits its mean is the exact denoiser's bound (>= the entropy)."""
    latent = _latent(prediction="logits")
    oracle = LatentOracle(CHAIN, latent)
    g = torch.Generator().manual_seed(15)
    x0 = CHAIN.sample(3000, g)
    t = udm.time.train_times(latent, udm.registry().create("time", "continuous"), len(x0), g)
    eps = latent.sample_noise(x0, g)
    x_t = latent.forward(x0, eps, t)
    per = latent.training_loss(_oracle_logits(oracle, x_t, t).float(), x0, eps, x_t, t) * CHAIN.length
    mean, se = float(per.mean()), float(per.std() / math.sqrt(len(per)))
    ref = latent.nelbo(oracle, x0, torch.Generator().manual_seed(16), times=4).total
    assert abs(mean - float(ref.mean())) < 4 * math.hypot(se, float(ref.std()) / math.sqrt(len(ref))), (mean, ref.mean())
    assert mean >= _entropy(CHAIN) - 4 * se


def test_a_transformer_with_a_logits_head_trains_the_latent_model_and_its_embeddings(reg):
    latent = reg.create("corruption", "latent", encoder={"name": "embedding", "vocab_size": 3, "dim": 4},
                        loss="cross_entropy", prediction="logits")
    net = reg.create("model", "transformer", vocab_size=3, data_shape=latent.state_shape([4]), width=16, depth=1,
                     heads=2, logits=True)
    time = reg.create("time", "continuous", t_min=latent.recon_time)
    before = latent.encoder.weight.detach().clone()
    trainer = udm.Trainer(net, latent, time, lr=1e-2, ema=0)
    out = trainer.fit(CHAIN.sample(256, torch.Generator().manual_seed(17)), steps=5, batch_size=32)
    assert all(math.isfinite(v) for v in out.losses) and float((latent.encoder.weight.detach() - before).abs().max()) > 1e-4
    x = udm.sample(net, latent, time, shape=(7, 4), sampler="ddim", steps=4, generator=torch.Generator().manual_seed(18))
    assert x.dtype == torch.long and x.shape == (7, 4)


def test_bad_logits_heads_are_clear_errors(reg):
    enc = {"name": "embedding", "vocab_size": 3}
    with pytest.raises(ConfigError, match=r"corruption latent: loss and prediction must be compatible; got "
                                          r"loss='cross_entropy' with prediction='inner'. Set prediction: logits"):
        reg.create("corruption", "latent", encoder=enc, loss="cross_entropy")
    with pytest.raises(ConfigError, match=r"corruption latent: loss and prediction must be compatible; got "
                                          r"loss='simple' with prediction='logits'. Set loss: cross_entropy or elbo"):
        reg.create("corruption", "latent", encoder=enc, loss="simple", prediction="logits")
    latent = reg.create("corruption", "latent", encoder=enc, loss="cross_entropy", prediction="logits")
    z = torch.zeros(2, 4, 16)
    with pytest.raises(ConfigError, match=r"encoder embedding: the network's logits must have vocab_size = 3 entries "
                                          r"per position; got shape \(2, 4, 16\).*transformer: logits: true"):
        latent.to_x0(z, z, torch.full((2,), 0.5))
