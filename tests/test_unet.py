"""The built-in ``unet`` model: shapes, time conditioning, errors, and that it can learn."""

from __future__ import annotations

import pytest
import torch

import udm
from udm.errors import ConfigError


def _unet(**kw):
    return udm.registry().create("model", "unet", **kw)


@pytest.mark.parametrize("shape,mult", [([1, 8, 8], [1, 2, 2]), ([3, 16, 12], [1, 2]), ([2, 5, 7], [1])])
def test_shapes_and_gradients(shape, mult):
    torch.manual_seed(0)
    net = _unet(data_shape=shape, channels=16, channel_mult=mult)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the output layer starts at zero
    x = torch.randn(3, *shape, requires_grad=True)
    out = net(x, torch.tensor([0.0, 500.0, 1000.0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in net.parameters())


def test_output_depends_on_time_and_is_per_example():
    torch.manual_seed(0)
    net = _unet(data_shape=[1, 8, 8], channels=16)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    x = torch.randn(2, 1, 8, 8)
    a, b = net(x, torch.tensor([10.0, 10.0])), net(x, torch.tensor([10.0, 900.0]))
    torch.testing.assert_close(a[0], b[0])  # example 0 unchanged: no mixing across the batch
    assert float((a[1] - b[1]).detach().abs().max()) > 1e-4


def test_learns_to_denoise_a_fixed_pattern():
    # a tiny regression: map noisy copies of one pattern back to it; the loss must fall by 10x
    torch.manual_seed(0)
    net = _unet(data_shape=[1, 8, 8], channels=8, channel_mult=[1, 2], attention=False)
    target = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        x = target + 0.3 * torch.randn(8, 1, 8, 8)
        loss = (net(x, torch.full((8,), 300.0)) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10


def test_errors():
    with pytest.raises(ConfigError, match=r"model unet: height and width must be divisible by 2\^\(len\(channel_mult\) - 1\) = 4"):
        _unet(data_shape=[1, 6, 8], channel_mult=[1, 2, 2])
    with pytest.raises(ConfigError, match=r"model unet: data_shape must be \[channels, height, width\]; got \[64\]"):
        _unet(data_shape=[64])
    net = _unet(data_shape=[1, 8, 8], channels=8)
    with pytest.raises(ConfigError, match=r"model unet: input must have shape \(batch, 1, 8, 8\); got \(2, 3, 8, 8\)"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 250.0])
    emb = udm.nn.timestep_embedding(t, 8)
    k = torch.arange(4, dtype=torch.float64)
    freqs = 10000.0 ** (-k / 4)
    want = torch.cat([torch.cos(250.0 * freqs), torch.sin(250.0 * freqs)]).float()
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    torch.testing.assert_close(emb[1], want, atol=1e-4, rtol=0)
