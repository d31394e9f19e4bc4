"""The ``insertion`` model: output protocol and shapes, per-row independence from the batch (mixed
lengths = one by one), sampling respects x_t as a subsequence and the length cap, it learns, errors."""

from __future__ import annotations

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.plugins.delete import Delete
from udm.plugins.insertion import Insertion


def _net(seed=0, **kw):
    torch.manual_seed(seed)  # test-side init only; library code takes explicit generators
    return Insertion(**{"vocab_size": 5, "max_length": 8, "width": 32, "depth": 2, "heads": 2, **kw}).eval()


def test_output_shapes_and_protocol():
    net = _net()
    x_t = udm.Sequences.pad_list([[0, 1, 2], [], [4]])
    out = net(x_t, torch.tensor([100.0, 900.0, 500.0]))
    assert out.count_logits.shape == (3, 4, 9) and out.max_length == 8
    x = udm.Sequences.pad_list([[0, -1, 1], [-1, -1], [4]])
    holes = x.tokens == -1
    assert out.token_logits(x, holes).shape == (3, 3, 5)


def test_mixed_length_batch_gives_the_same_per_sequence_results_as_one_by_one():
    net, c = _net(), Delete()
    rows = [[0, 1, 2, 3, 4, 0], [1], [], [2, 2, 3]]
    x0 = udm.Sequences.pad_list(rows)
    g = torch.Generator().manual_seed(0)
    eps, t = c.sample_noise(x0, g), torch.tensor([0.3, 0.5, 0.9, 0.6], dtype=torch.float64)
    x_t = c.forward(x0, eps, t)
    with torch.no_grad():
        batch = c.nll(net(x_t, t * 1000), x0, eps, x_t, t)
        for i in range(len(rows)):
            one = x0[i]
            e1 = eps[i: i + 1, : len(rows[i])]
            xt1 = c.forward(one, e1, t[i: i + 1])
            assert xt1 == x_t[i]
            single = c.nll(net(xt1, t[i: i + 1] * 1000), one, e1, xt1, t[i: i + 1])
            assert torch.allclose(single, batch[i: i + 1], atol=1e-5), (i, single, batch[i])
            cl = net(xt1, t[i: i + 1] * 1000).count_logits
            assert torch.allclose(cl[0], net(x_t, t * 1000).count_logits[i, : cl.shape[1]], atol=1e-5)


def test_sample_x0_contains_x_t_as_subsequence_and_respects_the_length_cap():
    net, c = _net(max_length=6), Delete()
    x_t = udm.Sequences.pad_list([[0, 1, 2], [3], [], [4, 4, 4, 4, 4, 4]] * 50)
    t = torch.full((len(x_t),), 0.7, dtype=torch.float64)
    with torch.no_grad():
        x0 = c.sample_x0(net(x_t, t * 1000), x_t, t, torch.Generator().manual_seed(1))
    assert int(x0.lengths.max()) <= 6 and bool((x0.lengths >= x_t.lengths).all())
    assert torch.equal(x0.kept.sum(1), x_t.lengths)
    assert udm.Sequences.from_mask(x0.tokens, x0.kept, x0.pad) == x_t
    assert bool((x0.tokens[x0.mask] >= 0).all() and (x0.tokens[x0.mask] < 5).all())
    assert int((x0.lengths - x_t.lengths).sum()) > 0  # the untrained net does insert something


def test_learns_a_two_sequence_language_end_to_end(reg):
    """udm.train on udm.Sequences data, then udm.sample with the invert sampler: most samples must be one
    of the two training sequences (an untrained net almost never produces them)."""
    data = udm.Sequences.pad_list([[0, 1, 2, 3], [4, 4]] * 32)
    c, tt = Delete(), reg.create("time", "continuous")
    torch.manual_seed(0)
    net = Insertion(vocab_size=5, max_length=6, width=32, depth=1, heads=2)
    res = udm.train(net, c, tt, data, steps=150, batch_size=32, lr=5e-3, ema=0.0, seed=0)
    assert res.losses[-1] < 0.25 * res.losses[0], (res.losses[0], res.losses[-1])
    x = udm.sample(res.best, c, tt, shape=(200,), sampler="invert", steps=6,
                   generator=torch.Generator().manual_seed(2), registry=reg)
    hits = sum(r in ([0, 1, 2, 3], [4, 4]) for r in x.tolist())
    assert hits >= 160, (hits, x.tolist()[:10])


def test_errors():
    with pytest.raises(ConfigError, match=r"model insertion: vocab_size and max_length must be >= 1 and width an even multiple of heads; got vocab_size=5, max_length=8, width=30, heads=4\. Pick"):
        Insertion(5, 8, width=30, heads=4)
    net = _net()
    with pytest.raises(ConfigError, match=r"model insertion: sequences must be at most max_length=8 tokens long "
                                          r"\(learned absolute positions\); got a sequence of 9\. Build the model"):
        net(udm.Sequences.pad_list([[0] * 9]), torch.zeros(1))
    with pytest.raises(ConfigError, match=r"model insertion: x_t must be a udm.Sequences batch; got Tensor\. Use"):
        net(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1))


def test_the_length_limit_is_max_length_tokens_not_the_padded_width():
    """Learned absolute positions: max_length tokens are read (also inside a wider padded batch, with the same
    outputs as unpadded), max_length + 1 are refused; sample_x0 never grows x0_hat beyond max_length."""
    net, c = _net(max_length=8), Delete()
    full = udm.Sequences.pad_list([[1] * 8, [2, 3]])
    wide = udm.Sequences(torch.nn.functional.pad(full.tokens, (0, 4), value=full.pad), full.lengths, full.pad)
    t = torch.tensor([300.0, 600.0])
    with torch.no_grad():
        a, b = net(full, t), net(wide, t)
    assert b.count_logits.shape == (2, 13, 9)
    assert torch.allclose(a.count_logits, b.count_logits[:, :9], atol=1e-5)
    holes = torch.zeros_like(full.tokens, dtype=torch.bool)
    wide_holes = torch.zeros_like(wide.tokens, dtype=torch.bool)
    assert torch.allclose(a.token_logits(full, holes), b.token_logits(wide, wide_holes)[:, :8], atol=1e-5)
    with torch.no_grad():
        half = torch.full((2,), 0.5, dtype=torch.float64)
        x0 = c.sample_x0(net(full, t), full, half, torch.Generator().manual_seed(0))
    assert int(x0.lengths.max()) <= 8


def test_max_length_is_taken_from_the_data(reg, tmp_path):
    """Left unset, max_length is the data's longest sequence (the runner passes data_shape): data of length 70
    train with no max_length given, where the old fixed default of 64 failed at the first step."""
    assert Insertion(vocab_size=3, data_shape=[70], width=16, depth=1, heads=2).max_length == 70
    assert Insertion(vocab_size=3, width=16, depth=1, heads=2).max_length == 64
    data = udm.Sequences.pad_list([[0, 1, 2] * 23 + [0], [1, 2]])  # lengths 70 and 2
    net = reg.create("model", "insertion", vocab_size=3, data_shape=list(data.shape[1:]), width=16, depth=1, heads=2)
    res = udm.train(net, Delete(), reg.create("time", "continuous"), data, steps=2, batch_size=2, ema=0.0)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    # the runner injects data_shape = [longest sequence] of the dataset
    exp = udm.Experiment.from_dict({"corruption": {"name": "delete"}, "time": {"name": "continuous"},
                                    "model": {"name": "insertion", "width": 16, "depth": 1, "heads": 2},
                                    "data": {"name": "brackets", "n": 64, "length": 12, "variable_length": True},
                                    "train": {"steps": 1}}, reg)
    brackets = exp.build_data()
    _, _, built = exp.build(list(brackets.shape[1:]), 4, seed=0)
    assert built.max_length == int(brackets.lengths.max()) == 12
