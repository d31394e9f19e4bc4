"""Image-quality metrics that need no pretrained network.

``frechet_pixels``: the Fréchet distance between Gaussians fitted to flattened samples and reference,
i.e. FID (Heusel et al. 2017, eq. 6) with the identity as feature map:

    d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})

computed in float64 through symmetric eigendecompositions (no matrix square roots of non-symmetric
products, so it is exact up to rounding and never complex). Meaningful for small images (8x8 digits:
64 dimensions); the number of samples should exceed the dimension.
"""

from __future__ import annotations

import torch

import udm
from udm.errors import ConfigError


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(s)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def gaussian_frechet(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, s1) and N(mu2, s2)."""
    r1 = _psd_sqrt(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def frechet_pixels(samples: torch.Tensor, reference: torch.Tensor, *, generator=None) -> float:
    """Fréchet distance (squared, like FID) between Gaussians fitted to flattened ``samples`` ``(n, ...)``
    and ``reference`` ``(m, ...)``; unbiased covariances; ``generator`` is unused (deterministic)."""
    x = samples.detach().reshape(samples.shape[0], -1).to(torch.float64).cpu()
    y = reference.detach().reshape(reference.shape[0], -1).to(torch.float64).cpu()
    if x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ConfigError(f"metric frechet_pixels: samples and reference must have >= 2 examples of equal size; "
                          f"got shapes {tuple(samples.shape)} and {tuple(reference.shape)}.")
    return gaussian_frechet(x.mean(0), torch.atleast_2d(torch.cov(x.T)), y.mean(0), torch.atleast_2d(torch.cov(y.T)))


@udm.hookimpl
def udm_register_metrics(register):
    register(frechet_pixels)
