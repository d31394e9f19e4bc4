"""The per-grid coefficient cache that keeps udm's sampler overhead low (udm._tensor.TimeCache/grid_times)."""

from __future__ import annotations

import torch

import udm
from udm._tensor import TimeCache, grid_times


def _counting(fn):
    calls = []

    def wrapped(t):
        calls.append(t.shape)
        return fn(t)

    return wrapped, calls


def test_grid_tagged_times_give_the_same_values_with_one_evaluation_per_grid():
    fn, calls = _counting(lambda t: (t.exp(), 2 * t))
    cache = TimeCache(fn)
    grid = torch.tensor([1.0, 0.6, 0.25, 0.0], dtype=torch.float64)
    ts = grid_times(grid, batch=5)
    for t in ts:
        a, b = cache(t)
        assert torch.equal(a, t.exp()) and torch.equal(b, 2 * t) and a.shape == (5,)
    assert calls == [torch.Size([4])]  # the whole grid once, not once per grid point or sample


def test_in_place_change_disables_the_shortcut_and_identity_cache():
    fn, calls = _counting(lambda t: t * 3)
    cache = TimeCache(fn)
    (t,) = grid_times(torch.tensor([0.5], dtype=torch.float64), batch=3)
    assert torch.equal(cache(t), torch.full((3,), 1.5, dtype=torch.float64))
    t.fill_(0.25)  # bumps the version: neither the identity entry nor the grid row may be reused
    assert torch.equal(cache(t), torch.full((3,), 0.75, dtype=torch.float64))
    assert len(calls) == 2


def test_untagged_and_transformed_times_are_computed_directly():
    fn, calls = _counting(lambda t: t + 1)
    cache = TimeCache(fn)
    t = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert torch.equal(cache(t), t + 1) and torch.equal(cache(t), t + 1)
    assert len(calls) == 1  # identity hit the second time
    _, v = torch.func.jvp(cache, (t,), (torch.ones_like(t),))  # inside jvp: never cached, derivative exact
    assert torch.equal(v, torch.ones_like(t)) and len(calls) == 2


def test_sampler_results_do_not_depend_on_the_cache():
    """The gaussian corruption's coefficients through the grid cache equal a cache-free evaluation."""
    c = udm.registry().create("corruption", "gaussian", schedule="linear", prediction="eps")
    grid = udm.registry().create("time", "discrete", steps=1000).grid(10)
    for t in grid_times(grid, batch=4):
        cached = c._coef(t)
        fresh = c._compute_amplitudes(t.clone())
        assert torch.equal(cached.alpha, fresh[0]) and torch.equal(cached.sigma, fresh[1])
