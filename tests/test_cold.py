"""Cold Diffusion's pieces, pinned by their defining properties (each of these fails when its formula is
mutated, which no other test caught):

* the ``residual`` rule is x_t + F_s(x0_hat, eps_hat) - F_t(x0_hat, eps_hat) (Algorithm 2), not F_s: the
  two differ exactly when x0_hat does not explain x_t, e.g. deterministic blur with an imperfect x0_hat;
* the ``cold`` preset is that rule; with noise (sigma > 0) the noise posterior inverts F exactly, so it
  *equals* ``invert`` for any x0_hat, and the preset says so instead of claiming Algorithm 2;
* the ``laplace`` family's loss is the L1 error, mean |output - target| over the data dims, not squared.
"""

from __future__ import annotations

import pytest
import torch

import udm
from udm.plugins.blur import BlurCorruption


def _images(n, seed):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


class _Off:
    """An imperfect denoiser: the true x_0 plus a fixed offset image (x0_hat does not explain x_t)."""

    def __init__(self, x0, offset):
        self.x0, self.offset = x0, offset

    def __call__(self, x_t, t, generator=None):
        return self.x0 + self.offset


def _t(v, n):
    return torch.full((n,), v, dtype=torch.float64)


def test_residual_is_x_t_plus_f_s_minus_f_t_not_f_s(reg):
    """Deterministic blur (sigma = 0): one residual step from t = 0.7 to s = 0.4 with x0_hat = x_0 + offset is
    x_t + D_s(x0_hat) - D_t(x0_hat) to float64 precision, and differs from invert's D_s(x0_hat) by
    x_t - D_t(x0_hat), which is far from zero."""
    c = BlurCorruption(sigma=0.0, family="laplace", data_range=None)
    x0, offset = _images(4, 0), 0.5 + 0.3 * _images(4, 1)  # the blur keeps the constant part of the offset
    x_t = c.forward(x0, torch.zeros_like(x0), _t(0.7, 4))
    den = _Off(x0, offset)
    grid = torch.tensor([0.7, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    res = reg.get("sampler", "residual")(den, c, grid, x_t, generator=g)
    x0_hat = x0 + offset
    want = x_t + c.degrade(x0_hat, _t(0.4, 4)) - c.degrade(x0_hat, _t(0.7, 4))
    torch.testing.assert_close(res, want, rtol=0, atol=1e-12)
    inv = reg.get("sampler", "invert")(den, c, grid, x_t, generator=g)
    torch.testing.assert_close(inv, c.degrade(x0_hat, _t(0.4, 4)), rtol=0, atol=1e-12)
    gap = float((res - inv).abs().max())
    assert gap > 0.3, gap  # = max |x_t - D_t(x0_hat)|
    torch.testing.assert_close(res - inv, x_t - c.degrade(x0_hat, _t(0.7, 4)), rtol=0, atol=1e-12)
    # the cold preset is this rule
    cold = reg.get("sampler", "cold")(den, c, grid, x_t, generator=g)
    torch.testing.assert_close(cold, res, rtol=0, atol=0)


@pytest.mark.parametrize("noise,sigma", [("linear", 0.2), ("vp", 0.5)])
def test_cold_with_noise_equals_invert_and_says_so(reg, noise, sigma):
    """sigma > 0: eps_hat = (x_t - alpha_t D_t x0_hat) / sigma_t is the exact inverse, F_t(x0_hat, eps_hat) = x_t,
    so x_t + F_s - F_t = F_s: cold equals invert over a whole chain even with an imperfect x0_hat. Its
    description must not claim Algorithm 2 unconditionally."""
    c = BlurCorruption(noise=noise, sigma=sigma, data_range=None)
    x0, offset = _images(4, 2), 0.3 * _images(4, 3)
    x_t = c.forward(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=x0.dtype),
                    _t(0.8, 4))
    grid = torch.tensor([0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    cold = reg.get("sampler", "cold")(_Off(x0, offset), c, grid, x_t, generator=torch.Generator().manual_seed(5))
    inv = reg.get("sampler", "invert")(_Off(x0, offset), c, grid, x_t, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cold, inv, rtol=0, atol=1e-12)
    desc = reg.get("sampler", "cold").description
    assert "Algorithm 2 when F is deterministic" in desc and "equals invert" in desc


def test_laplace_loss_is_the_mean_absolute_error():
    out = torch.tensor([[0.0, 2.0, -1.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[2.0, 1.5, -1.0, 0.0], [-1.0, 1.0, 4.0, 1.0]])
    # |errors| = [2, 0.5, 0, 0.5] and [2, 0, 3, 0]: means 0.75 and 1.25 (squared would give 1.125 and 3.25)
    torch.testing.assert_close(udm.Laplace().loss(out, target), torch.tensor([0.75, 1.25]))
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    torch.testing.assert_close(udm.Laplace().loss(out, target, mask), torch.tensor([2.5 / 4, 3 / 4]))


def test_blur_with_the_laplace_family_trains_on_the_l1_error(reg):
    """diffusion_loss of a laplace corruption is mean |network(x_t) - x_0| per sample, with the same draws."""
    c = BlurCorruption(sigma=0.1, family="laplace")
    time = reg.create("time", "continuous")
    x0 = _images(6, 6).float()

    class Const(torch.nn.Module):
        def forward(self, x_t, enc):
            return 0.5 * x_t + 0.2

    out = udm.diffusion_loss(Const(), c, time, x0, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = time.sample_train(6, g)
    x_t = c.forward(x0, c.sample_noise(x0, g), t)
    want = (0.5 * x_t + 0.2 - x0).abs().flatten(1).mean(1)
    torch.testing.assert_close(out.per_sample, want.detach())
    assert not torch.allclose(out.per_sample, ((0.5 * x_t + 0.2 - x0) ** 2).flatten(1).mean(1))
