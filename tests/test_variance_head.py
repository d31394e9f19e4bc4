"""SN-DPM / NPR-DPM heads: only the head trains (the mean's weights are bit-for-bit unchanged, EMA included), the
head reads the backbone's features, and its output becomes Sigma by the closed forms (clipped into the bound)."""

from __future__ import annotations

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.variance_head import HeadVariance, VarianceHeadNetwork, head_loss


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def parts():  # a fresh mean network per test: wrapping taps its output layer in place
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    time = reg.create("time", "discrete", steps=100)
    torch.manual_seed(0)
    mean = reg.create("model", "mlp", data_shape=[2], width=16, depth=1, time_dim=8)
    return corr, time, mean


@pytest.mark.parametrize("kind", ["sn", "npr"])
def test_second_stage_trains_only_the_head(parts, kind):
    corr, time, mean = parts
    before = {k: v.clone() for k, v in mean.state_dict().items()}
    net = VarianceHeadNetwork(mean, kind, torch.ones(2))
    data = torch.randn(256, 2, generator=gen(1)) * 0.5
    trainer = udm.Trainer(net, corr, time, lr=1e-2, ema=0.9, seed=0)
    trainer.loss_fn = head_loss(kind)
    head_before = net.head.weight.clone()
    losses = [trainer.train_step(trainer.next_batch(data, 64)) for _ in range(40)]
    after = net.mean.state_dict()
    ema_mean = trainer.ema.mean.state_dict()
    for k, v in before.items():  # the tap renames the output layer's keys: out.2.weight -> out.2.layer.weight
        k2 = k.replace("out.2.", "out.2.layer.")
        assert torch.equal(after[k2], v) and torch.equal(ema_mean[k2], v), k
    assert not torch.equal(net.head.weight, head_before)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert not net.mean.training and net.training  # the mean stays in eval mode while the head trains
    out, h = net(torch.zeros(3, 2), torch.zeros(3))
    assert out.shape == h.shape == (3, 2)
    torch.testing.assert_close(net.mean_network(torch.zeros(3, 2), torch.zeros(3)), out)


def test_head_output_becomes_sigma_by_the_closed_forms(parts):
    corr, time, _ = parts
    t = torch.full((4,), 0.5, dtype=torch.float64)
    x_t = torch.randn(4, 2, generator=gen(2), dtype=torch.float64)
    mean = torch.randn(4, 2, generator=gen(3), dtype=torch.float64) * 0.3
    head = torch.rand(4, 2, generator=gen(4), dtype=torch.float64) * 0.02
    v = torch.tensor([0.25, 4.0], dtype=torch.float64)
    sch = corr.schedule(t[:1])
    a, s = float(sch.alpha), float(sch.sigma)
    bound = v * s * s / (a * a * v + s * s)
    bound = bound.maximum(bound.mean())  # never below the coefficients' average bound (the next test)
    npr = HeadVariance(corr, "npr", v).from_head(head, x_t, t, mean)
    torch.testing.assert_close(npr, torch.minimum(s * s / (a * a) * head, bound.expand(4, 2)))
    signed = head - 0.01
    sn = HeadVariance(corr, "sn", v).from_head(signed, x_t, t, mean)
    raw = s * s / (a * a) * signed
    assert bool((raw < 0).any()) and bool((raw > 0).any())  # both branches: a negative variance -> the bound
    torch.testing.assert_close(sn, torch.where(raw < 0, bound.expand(4, 2), raw.minimum(bound)))
    with pytest.raises(ConfigError, match=r"variance 'sn': the variance must come from the network's second head"):
        HeadVariance(corr, "sn", v)(t, x_t)


def test_head_clip_never_below_the_average_bound(parts):
    """A coefficient the training data never varies (v_k = 0: a blank corner pixel of the digits) has the linear-MMSE
    bound 0, a bound of the average over x_t of the Bayes error only (not of Var[x_0k | x_t] at one x_t, nor of an
    imperfect mean's error): clipping the head's Sigma to it gave Sigma = 0 there (a beta_tilde step) and the
    digits benchmark's heads 0.48 nats/dim instead of -0.08. The clip is each coefficient's bound or the average of
    the bounds over the coefficients (of each sample's time), the larger."""
    corr, _, _ = parts
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x_t = torch.zeros(2, 3, dtype=torch.float64)
    v = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    sch = corr.schedule(t)
    a2, s2 = (sch.alpha ** 2).reshape(2, 1), (sch.sigma ** 2).reshape(2, 1)
    bound = v * s2 / (a2 * v + s2)  # (2, 3), first column 0
    clip = torch.maximum(bound, bound.mean(1, keepdim=True))
    assert bool((clip[:, 0] > 0).all()) and bool((clip[:, 2] == bound[:, 2]).all())
    head = torch.tensor([[50.0, 50.0, 1e-3], [50.0, 1e-3, 50.0]], dtype=torch.float64)  # clipped and not
    sigma = HeadVariance(corr, "npr", v).from_head(head, x_t, t, x_t)
    torch.testing.assert_close(sigma, torch.minimum(s2 / a2 * head, clip))
    assert float(sigma[0, 0]) == float(clip[0, 0]) > 0 and float(sigma[1, 1]) < float(clip[1, 1])


def test_denoiser_draws_with_the_head_variance(parts):
    corr, time, mean = parts
    net = VarianceHeadNetwork(mean, "npr", torch.ones(2))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(0.01)
    den = udm.Denoiser(net, corr, time, variance=HeadVariance.of(net, corr))
    x_t = torch.zeros(20000, 2)
    t = torch.full((20000,), 0.3, dtype=torch.float64)
    pred = den.predict(x_t, t, gen(5))
    sch = corr.schedule(t[:1])
    want = float(sch.sigma) ** 2 / float(sch.alpha) ** 2 * 0.01
    torch.testing.assert_close(pred.variance, torch.full((20000, 2), want), rtol=1e-5, atol=0)
    assert abs(float((pred.x0_hat - pred.mean).var()) / want - 1) < 0.05


def test_feature_layer_errors():
    class NoParams(torch.nn.Module):
        def forward(self, x, t):
            return x

    with pytest.raises(ConfigError, match=r"variance head: the mean network must have a layer with parameters to copy"):
        VarianceHeadNetwork(NoParams(), "sn", torch.ones(2))
    with pytest.raises(ConfigError, match=r"variance head: kind must be one of sn, npr; got 'big'"):
        VarianceHeadNetwork(torch.nn.Linear(2, 2), "big", torch.ones(2))


@pytest.mark.parametrize("kind", ["sn", "npr"])
def test_head_loss_targets(parts, kind):
    """The loss is the head's squared error to eps^2 - eps_hat^2 (sn: SN-DPM's E[eps^2 | x_t] less the known
    eps_hat^2) or (eps - eps_hat)^2 (npr), eps_hat from the frozen mean, with the same draws of t and eps as the
    mean's loss (replayed here from the seed)."""
    corr, time, mean = parts
    net = VarianceHeadNetwork(mean, kind, torch.ones(2))
    x0 = torch.randn(32, 2, generator=gen(6))
    got = head_loss(kind)(net, corr, time, x0, gen(7))
    g = gen(7)
    t = time.sample_train(32, g)
    eps = corr.sample_noise(x0, g)
    x_t = corr.forward(x0, eps, t)
    with torch.no_grad():
        out, h = net(x_t, time.encode(t))
        sch = corr.schedule(t)
        a, s = sch.alpha[:, None].float(), sch.sigma[:, None].float()
        e_hat = (x_t - a * ((x_t - s * out) / a)) / s  # eps-prediction: eps_hat = the network's output
        target = eps**2 - e_hat**2 if kind == "sn" else (eps - e_hat) ** 2
    torch.testing.assert_close(got.loss.detach(), ((h - target) ** 2).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.t, t)


def test_clamp_moves_the_draw_with_the_clamped_mean():
    """clamp=True with a variance clamps q_theta's mean (as Analytic-DPM clamps x0_pred) and keeps the draw's noise:
    clamping the draw itself would cut the variance's noise in half where the data sits on its range's edge."""
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="x0", data_range=[-1.0, 1.0])
    time = reg.create("time", "discrete", steps=100)

    class Edge(torch.nn.Module):  # predicts x_0 = -1.2 everywhere (outside the range)
        def forward(self, x, t):
            return torch.full_like(x, -1.2)

    den = udm.Denoiser(Edge(), corr, time, variance=udm.VarianceTable([0.5], [0.04]))
    seen = []
    udm.samplers.RULES["invert"](den, corr, torch.tensor([0.5, 0.0], dtype=torch.float64), torch.zeros(20000, 1),
                                 generator=gen(8), clamp=True, callback=lambda st: seen.append(st.x0_hat))
    drawn = seen[0]
    assert abs(float(drawn.mean()) + 1.0) < 0.01 and abs(float(drawn.std()) - 0.2) < 0.01  # N(-1, 0.2^2), not cut
