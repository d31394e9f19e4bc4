"""The built-in token ``transformer``: shapes, mask-id input, bidirectionality, time conditioning, padding,
errors, and that it learns (a few optimisation steps on a deterministic toy task)."""

import pytest
import torch

import udm
from udm.plugins.transformer import TokenTransformer


def small(**kw):
    torch.manual_seed(0)
    return TokenTransformer(**{"vocab_size": 5, "max_length": 8, "width": 32, "depth": 2, "heads": 4, **kw})


def test_shapes_and_registry(reg):
    net = reg.create("model", "transformer", vocab_size=5, data_shape=[8], width=32, depth=1, heads=2)
    assert net.max_length == 8 and net.embed.num_embeddings == 6
    x = torch.randint(0, 6, (3, 8))  # id 5 = [MASK]
    out = net(x, torch.rand(3) * 1000)
    assert out.shape == (3, 8, 5) and out.dtype == torch.float32
    assert net(x[:, :5], torch.rand(3)).shape == (3, 5, 5)  # shorter sequences use the first positions


def _open_gates(net):
    with torch.no_grad():
        for block in net.blocks:
            block.ada.bias.normal_(0, 0.5)  # adaLN-Zero starts every block as the identity


def test_bidirectional():
    net = small()
    _open_gates(net)
    x = torch.randint(0, 5, (1, 8))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 5
    t = torch.tensor([500.0])
    assert not torch.allclose(net(x, t)[0, 0], net(y, t)[0, 0])  # the first position sees the last token


def test_time_conditioning():
    net = small()
    x = torch.randint(0, 5, (2, 8))
    t0, t1 = torch.tensor([0.0, 0.0]), torch.tensor([900.0, 900.0])
    assert torch.allclose(net(x, t0), net(x, t1))  # adaLN-Zero: no time effect at initialisation
    with torch.no_grad():
        for block in net.blocks:
            block.ada.weight.normal_(0, 0.1)
    assert not torch.allclose(net(x, t0), net(x, t1))


def test_padding_is_not_attended():
    net = small()
    _open_gates(net)
    x = torch.randint(0, 5, (1, 8))
    y = x.clone()
    y[0, 6:] = (x[0, 6:] + 2) % 5
    pad = torch.zeros(1, 8, dtype=torch.bool)
    pad[0, 6:] = True
    t = torch.tensor([100.0])
    assert torch.allclose(net(x, t, pad)[0, :6], net(y, t, pad)[0, :6], atol=1e-6)
    assert not torch.allclose(net(x, t)[0, :6], net(y, t)[0, :6], atol=1e-6)


def test_errors():
    with pytest.raises(udm.ConfigError, match=r"model transformer: vocab_size must be an integer >= 1; got 0\."):
        TokenTransformer(0, 8)
    with pytest.raises(udm.ConfigError, match=r"model transformer: max_length must be an integer >= 1; got None\. Pass"):
        TokenTransformer(4)
    with pytest.raises(udm.ConfigError, match=r"model transformer: width must be divisible by heads; got width=30"):
        TokenTransformer(4, 8, width=30, heads=4)
    with pytest.raises(udm.ConfigError, match=r"model transformer: x must have shape \(batch, length <= 8\); got \(1, 9\)"):
        small()(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1))


def test_learns_a_masked_task():
    """Copy task: the sequence is (a, a, b, b, ...); masked tokens are recoverable from their twin. After 100
    steps the masked-position accuracy must be far above chance (1/5)."""
    g = torch.Generator().manual_seed(0)
    net = small(depth=1)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(100):
        x0 = torch.randint(0, 5, (64, 4), generator=g).repeat_interleave(2, dim=1)
        m = torch.rand(64, 8, generator=g) < 0.3
        loss = torch.nn.functional.cross_entropy(net(x0.masked_fill(m, 5), torch.full((64,), 300.0))[m], x0[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.randint(0, 5, (512, 4), generator=g).repeat_interleave(2, dim=1)
    m = torch.zeros(512, 8, dtype=torch.bool)
    m[:, 0::2] = torch.rand(512, 4, generator=g) < 0.5  # mask one twin at most
    acc = (net(x0.masked_fill(m, 5), torch.full((512,), 300.0)).argmax(-1)[m] == x0[m]).double().mean()
    assert acc > 0.9, float(acc)


def test_continuous_inputs_of_a_latent_corruption():
    """data_shape [length, dim] (a latent corruption's embeddings): continuous inputs, outputs of the same shape."""
    reg = udm.registry()
    net = reg.create("model", "transformer", vocab_size=5, data_shape=[6, 3], width=16, depth=1, heads=2)
    out = net(torch.randn(2, 6, 3), torch.tensor([10.0, 500.0]))
    assert out.shape == (2, 6, 3) and net.input_dim == 3
    with pytest.raises(udm.ConfigError, match=r"model transformer: x must have shape \(batch, length <= 6, 3\); got "
                                              r"\(2, 6\)"):
        net(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2))
