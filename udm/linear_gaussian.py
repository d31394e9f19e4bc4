"""Linear-Gaussian corruptions: x_t = B^T (a(t) * B x_0 + s(t) * B eps), eps ~ N(0, I), B orthonormal.

Per coefficient k of the basis B every such corruption is a scalar affine process
(B x_t)_k = a_k(t) (B x_0)_k + s_k(t) eps_k, so one implementation derives, for all of them
(docs/math.md, "Linear-Gaussian corruptions"):

* the exact noise posterior eps = B^T ((B x_t - a B x_0) / s) (a fresh draw where s_k = 0);
* the closed-form posterior p(x_s | x_t, x_0) (Ho et al. 2020 eq. 7; Kingma et al. 2021 eq. 24), per
  coefficient with a_{t|s} = a_t / a_s, s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2:

      mean = a_{t|s} s_s^2 / s_t^2 x_t + a_s s_{t|s}^2 / s_t^2 x_0,   var = s_{t|s}^2 s_s^2 / s_t^2,

  which exists only where s_{t|s}^2 >= 0 (a clear :class:`~udm.CapabilityError` elsewhere, never NaN);
* the eta-refresh amounts r_k = eta sqrt(1 - SNR_k(t) / SNR_k(s)) (DDIM eq. 16, per coefficient);
* the score (a x_0 - x_t) / s^2, the log-SNR 2 log(a/s), the SDE drift f = a'/a and diffusion
  g^2 = (s^2)' - 2 f s^2 (Song et al. 2021 eq. 5 per coefficient), the probability-flow velocity
  a' x_0 + s' eps;
* every prediction target of :class:`~udm.Parameterization` with exact conversions;
* the prior's log-density and the Gaussian KLs of the ELBO.

A subclass sets ``basis`` (:mod:`udm.bases`) and implements :meth:`LinearGaussian.amplitudes`; the
built-in ``gaussian`` (B = I, a = alpha_t, s = sigma_t) and ``blur`` (B = DCT, a_k = alpha_t exp(-lambda_k
tau_t), s = sigma_t) are thin instances.

Samplers ask for the coefficients of a whole time grid at once (:meth:`LinearGaussian.marginals`) and
get one :class:`Marginal` per grid point: scalar coefficients become Python floats, so a step costs only
the elementwise ops on the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .bases import Basis, Identity
from .corruption import Corruption, GaussianNoise
from .errors import CapabilityError
from .parameterization import Parameterization

__all__ = ["LinearGaussian", "Marginal", "gaussian_kl", "lincomb"]

Coef = Any  # a Python float or a tensor broadcastable against (batch, *shape) coefficients


def lincomb(x: torch.Tensor, kx: Coef, y: torch.Tensor, ky: Coef) -> torch.Tensor:
    """kx * x + ky * y with the fewest ops (``torch.add(..., alpha=)`` when ky is a number)."""
    if not isinstance(ky, torch.Tensor):
        if not isinstance(kx, torch.Tensor) and kx == 1:
            return torch.add(x, y, alpha=ky)
        return torch.add(x * kx, y, alpha=ky)
    return x * kx + y * ky


@dataclass
class Marginal:
    """A linear-Gaussian corruption's coefficients at time(s) ``t``, ready to broadcast over a batch.

    ``a, s`` (and ``da, ds``) are in the data's dtype: Python floats when the coefficients are one scalar
    per time and one time is shared by the batch (a sampling grid), else tensors ``(n, *cshape)`` with
    n in {1, batch} that broadcast against ``(batch, *shape)``. ``a64, s64, da64, ds64`` keep them in
    float64 for derived coefficients (posteriors, refresh amounts, KLs).
    """

    t: torch.Tensor  #: ``(n,)`` float64
    a: Coef
    s: Coef
    a64: torch.Tensor
    s64: torch.Tensor
    da64: torch.Tensor | None = None
    ds64: torch.Tensor | None = None
    da: Coef = None
    ds: Coef = None

    @property
    def scalar(self) -> bool:
        return not isinstance(self.a, torch.Tensor) and not isinstance(self.s, torch.Tensor)

    def rows(self, start: int, stop: int) -> "Marginal":
        """Rows ``start:stop`` of a :meth:`LinearGaussian.grid_table` (float64 fields only)."""
        def cut(v):
            return None if v is None else v[start:stop]

        return Marginal(self.t[start:stop], None, None, cut(self.a64), cut(self.s64), cut(self.da64), cut(self.ds64))


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise (nats); variances > 0."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _cast(v: torch.Tensor, like: torch.Tensor, scalar: bool) -> Coef:
    return float(v.reshape(-1)[0]) if scalar else v.to(device=like.device, dtype=like.dtype)


class LinearGaussian(GaussianNoise, Corruption):
    """Base class of linear-Gaussian corruptions (see the module docstring).

    Subclasses set ``name``, ``basis`` (default :class:`~udm.bases.Identity`) and implement
    :meth:`amplitudes`; they may override :meth:`amplitude_derivatives` with a closed form,
    :meth:`sample_prior` (default x_1 = B^T (s(1) * B eps), i.e. a(1) x_0 neglected) and the prior's
    :meth:`prior_logp`. The network's target is chosen by ``parameterization``.

    Args:
        prediction, weighting, gamma: the :class:`~udm.Parameterization` (what the network outputs and
            how the loss is weighted).
    """

    data_kind: ClassVar[str] = "continuous"
    family = "gaussian"
    basis: Basis = Identity()
    #: per-sample data shape used to check the parameterisation at construction when amplitudes depend on it
    nominal_shape: ClassVar[tuple[int, ...]] = (1, 16, 16)

    def __init__(self, prediction: str = "v", weighting: str = "none", gamma: float = 5.0) -> None:
        self.parameterization = Parameterization(prediction, weighting, gamma)

    def _check_parameterization(self) -> None:
        """Refuse a prediction/weighting singular at the ends of this corruption's range (call last in
        ``__init__``, once the amplitudes are defined)."""
        shape = self.nominal_shape

        def coefficients(t):
            m = self.marginal(t, torch.zeros((1, *shape), dtype=torch.float64))
            return m.a64, m.s64, m.da64, m.ds64

        self.parameterization.check(coefficients, f"corruption {self.name}")

    # ------------------------------------------------------------ subclass API
    def amplitudes(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) float64 for times ``t`` ``(n,)`` and per-sample data ``shape``: either ``(n,)`` (one scalar
        per time) or ``(n, *cshape)`` with ``cshape`` broadcastable to ``shape`` (per basis coefficient)."""
        raise NotImplementedError

    def amplitude_derivatives(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a', s') = d/dt of :meth:`amplitudes`. Default: forward-mode autodiff; override with a closed form."""
        t = t.to(torch.float64).contiguous().clone()
        _, (da, ds) = torch.func.jvp(lambda tt: self.amplitudes(tt, shape), (t,), (torch.ones_like(t),))
        return da, ds

    # ------------------------------------------------------------- marginals
    def _shaped(self, v: torch.Tensor, n: int, shape) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=torch.float64)
        if v.ndim <= 1:
            v = v.reshape(-1).expand(n) if v.numel() == 1 else v
            return v.reshape(v.shape[0], *([1] * len(shape)))
        return v

    def marginal(self, t, like: torch.Tensor, *, derivatives: bool = True) -> Marginal:
        """Coefficients at times ``t`` (``(batch,)``, ``(1,)`` or a float) for data shaped like ``like``."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if t.device != like.device:
            t = t.to(like.device)
        if t.shape[0] == 1:
            return self.marginals(t, like, self.grid_table(t, like, derivatives))[0]
        a64, s64, da64, ds64 = self._coefficients(t, tuple(like.shape[1:]), derivatives)
        cast = (lambda v: None if v is None else v.to(like.dtype))  # noqa: E731
        return Marginal(t, cast(a64), cast(s64), a64, s64, da64, ds64, cast(da64), cast(ds64))

    def grid_table(self, grid: torch.Tensor, like: torch.Tensor, derivatives: bool = True) -> Marginal:
        """The coefficients at every point of ``grid`` ``(n,)`` at once: a :class:`Marginal` whose rows are the
        grid's times (float64, on the CPU; ``a``/``s`` unset). Slice it with :meth:`Marginal.rows`; pair
        coefficients of consecutive points (posterior, refresh amounts) are one call on ``rows`` slices."""
        grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1).cpu()
        a64, s64, da64, ds64 = self._coefficients(grid, tuple(like.shape[1:]), derivatives)
        return Marginal(grid, None, None, a64, s64, da64, ds64)

    def marginals(self, grid: torch.Tensor, like: torch.Tensor, table: Marginal | None = None) -> list[Marginal]:
        """One :class:`Marginal` per point of the float64 ``grid`` ``(N + 1,)``, each shared by the batch:
        the amplitudes and their derivatives are evaluated once on the whole grid (``table``, or
        :meth:`grid_table`). Scalar coefficients become Python floats."""
        tab = table if table is not None else self.grid_table(grid, like)
        n = tab.t.shape[0]
        scalar = tab.a64.numel() == n and tab.s64.numel() == n
        dev = like.device
        fields = (tab.a64, tab.s64, tab.da64, tab.ds64)
        rows = [None if v is None else v.to(dev).split(1) for v in fields]  # one op per field, not per point
        if scalar:
            cast = [None if v is None else v.reshape(-1).tolist() for v in fields]
        else:
            cast = [None if v is None else v.to(device=dev, dtype=like.dtype).split(1) for v in fields]
        times = tab.t.to(dev).split(1)
        pick = (lambda col, i: None if col is None else col[i])  # noqa: E731
        return [Marginal(times[i], pick(cast[0], i), pick(cast[1], i), pick(rows[0], i), pick(rows[1], i),
                         pick(rows[2], i), pick(rows[3], i), pick(cast[2], i), pick(cast[3], i)) for i in range(n)]

    def _coefficients(self, t: torch.Tensor, shape, derivatives: bool):
        a, s = self.amplitudes(t, shape)
        out = [self._shaped(a, t.shape[0], shape), self._shaped(s, t.shape[0], shape)]
        if derivatives:
            da, ds = self.amplitude_derivatives(t, shape)
            out += [self._shaped(da, t.shape[0], shape), self._shaped(ds, t.shape[0], shape)]
        else:
            out += [None, None]
        return out

    # ---------------------------------------------------- basis-space helpers
    def to_basis(self, x: torch.Tensor) -> torch.Tensor:
        """B x (coefficients, same shape)."""
        return x if self.basis.identity else self.basis.forward(x)

    def from_basis(self, c: torch.Tensor) -> torch.Tensor:
        """B^T c (data, same shape)."""
        return c if self.basis.identity else self.basis.inverse(c)

    # --------------------------------------------------------- derived maps
    def apply(self, m: Marginal, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = B^T (a B x_0 + s B eps) at the marginal ``m``."""
        if self.basis.identity:
            return lincomb(x0, m.a, eps, m.s)
        if not isinstance(m.s, torch.Tensor) or m.s.numel() == m.s.shape[0]:  # isotropic noise: s eps in data space
            return lincomb(self.from_basis(self.to_basis(x0) * m.a), 1, eps, m.s if not isinstance(m.s, torch.Tensor)
                           else m.s.reshape(m.s.shape[0], *([1] * (eps.ndim - 1))))
        return self.from_basis(lincomb(self.to_basis(x0), m.a, self.to_basis(eps), m.s))

    def invert_noise(self, m: Marginal, x_t: torch.Tensor, x0: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """eps = B^T ((B x_t - a B x_0) / s); coefficients with s = 0 get a fresh N(0, 1) draw (eps does not
        enter x_t there, so its posterior is the prior)."""
        if m.scalar and m.s > 0:
            if self.basis.identity:
                return lincomb(x_t, 1 / m.s, x0, -m.a / m.s)
            return (x_t - self.from_basis(self.to_basis(x0) * m.a)) / m.s
        s64 = m.s64
        if bool((s64 > 0).all()):
            return self.from_basis((self.to_basis(x_t) - self.to_basis(x0) * m.a) / m.s)
        safe = torch.where(s64 > 0, s64, torch.ones_like(s64)).to(x_t.dtype)
        inv = (self.to_basis(x_t) - self.to_basis(x0) * m.a) / safe
        fresh = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return self.from_basis(torch.where(s64 > 0, inv, fresh))

    def posterior_coefficients(self, mt: Marginal, ms: Marginal) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k_x, k_0, std) float64 of p(x_s | x_t, x_0) = N(k_x x_t + k_0 x_0, std^2), per coefficient.

        Raises :class:`~udm.CapabilityError` where s_{t|s}^2 = s_t^2 - a_{t|s}^2 s_s^2 < 0 (no Markov
        chain has these marginals there)."""
        at, st, as_, ss = mt.a64, mt.s64, ms.a64, ms.s64
        a_ts = torch.where(as_ > 0, at / torch.where(as_ > 0, as_, torch.ones_like(as_)), torch.zeros_like(at))
        var_ts = st * st - a_ts * a_ts * ss * ss
        tol = 1e-12 * torch.maximum(st * st, torch.ones_like(st))
        bad = var_ts < -tol
        if bool(bad.any()):
            row = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0]) if bad.shape[0] == mt.t.shape[0] else 0
            raise CapabilityError(
                f"corruption {self.name}: posterior p(x_s | x_t, x_0) needs s_t^2 >= (a_t/a_s)^2 s_s^2 for every "
                f"basis coefficient; got {int(bad[row].sum())} coefficient(s) violating it from "
                f"t = {float(mt.t[row]):.6g} to s = {float(ms.t[row]):.6g} (min s_t^2 - a_t|s^2 s_s^2 = "
                f"{float(var_ts[row].min()):.3g}). Use the invert or refresh samplers, which need only the noise "
                f"posterior.")
        var_ts = var_ts.clamp_min(0)
        pos = st > 0
        st2 = torch.where(pos, st * st, torch.ones_like(st))
        k_x = torch.where(pos, a_ts * ss * ss / st2, torch.zeros_like(st))
        k_0 = torch.where(pos, as_ * var_ts / st2, as_)
        var = torch.where(pos, var_ts * ss * ss / st2, torch.zeros_like(st))
        return k_x, k_0, var.sqrt()

    def refresh_amounts(self, mt: Marginal, ms: Marginal, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(1 - r^2), r) float64 per coefficient with r = eta sqrt(1 - SNR_t / SNR_s): the refresh that
        makes ``refresh`` DDIM-eta (eta = 1: the DDPM posterior). Formed from the SNR ratio rho directly,
        sqrt((1 - eta^2) + eta^2 rho), so no cancellation when rho is tiny."""
        at, st, as_, ss = mt.a64, mt.s64, ms.a64, ms.s64
        num, den = (at * ss) ** 2, (as_ * st) ** 2
        rho = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
        rho = rho.clamp(0, 1)
        keep = ((1 - eta * eta) + eta * eta * rho).sqrt()
        return keep, eta * (1 - rho).sqrt()

    def velocity(self, m: Marginal, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """d x_t / dt at fixed (x_0, eps): B^T (a' B x_0 + s' B eps) (the probability-flow ODE's velocity)."""
        return self.apply(Marginal(m.t, m.da, m.ds, m.da64, m.ds64), x0, eps)

    def score(self, m: Marginal, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x_t | x_0) = B^T ((a B x_0 - B x_t) / s^2) (the score when x_0 = E[x_0 | x_t])."""
        return self.from_basis((self.to_basis(x0) * m.a - self.to_basis(x_t)) / (m.s * m.s))

    def sde(self, m: Marginal) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, g^2) float64 per coefficient of dx = f x dt + g dw: f = a'/a, g^2 = 2 s s' - 2 f s^2."""
        f = m.da64 / m.a64
        return f, 2 * m.s64 * m.ds64 - 2 * f * m.s64**2

    def log_snr(self, m: Marginal) -> torch.Tensor:
        """lambda = log(a^2 / s^2) float64 per coefficient."""
        return 2 * (torch.log(m.a64) - torch.log(m.s64))

    # ---------------------------------------------------------- the contract
    def forward(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.apply(self.marginal(t, x0, derivatives=False), x0, eps)

    def noise_posterior(self, x_t, x0, t, generator=None) -> torch.Tensor:
        """The exact inverse eps = B^T ((B x_t - a B x_0) / s) (a point mass where s > 0)."""
        return self.invert_noise(self.marginal(t, x_t, derivatives=False), x_t, x0, generator)

    def posterior(self, x_t, x0, t, s, generator) -> torch.Tensor:
        """A draw of p(x_s | x_t, x_0) (see :meth:`posterior_coefficients`)."""
        return self.posterior_step(self.marginal(t, x_t, derivatives=False),
                                   self.marginal(s, x_t, derivatives=False), x_t, x0, generator)

    def posterior_step(self, mt: Marginal, ms: Marginal, x_t, x0, generator, coefficients=None) -> torch.Tensor:
        """A draw of p(x_s | x_t, x_0) at the marginals ``mt``, ``ms`` (``coefficients``: the (k_x, k_0, std)
        of :meth:`posterior_coefficients`, cast for the data, when the caller tabulated them)."""
        k_x, k_0, std = coefficients if coefficients is not None else \
            (_cast(v, x_t, mt.scalar and ms.scalar) for v in self.posterior_coefficients(mt, ms))
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        if self.basis.identity:
            return lincomb(lincomb(x_t, k_x, x0, k_0), 1, z, std)
        return self.from_basis(self.to_basis(x_t) * k_x + self.to_basis(x0) * k_0 + self.to_basis(z) * std)

    def refresh_step(self, mt: Marginal, ms: Marginal, x_t, x0, eta: float, generator, amounts=None) -> torch.Tensor:
        """x_s = F_s(x_0, sqrt(1 - r^2) eps_hat + r z) with the per-coefficient DDIM-eta amounts r
        (``amounts``: :meth:`refresh_amounts` cast for the data, when the caller tabulated them)."""
        keep, r = amounts if amounts is not None else \
            (_cast(v, x_t, mt.scalar and ms.scalar) for v in self.refresh_amounts(mt, ms, eta))
        eps = self.invert_noise(mt, x_t, x0, generator)
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        if self.basis.identity or not isinstance(keep, torch.Tensor):
            return self.apply(ms, x0, lincomb(eps, keep, z, r))
        return self.apply(ms, x0, self.from_basis(self.to_basis(eps) * keep + self.to_basis(z) * r))

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_1 = B^T (s(1) B eps), eps ~ N(0, I): the law of x_1 when a(1) x_0 is negligible."""
        return self.noise_prior(1.0, shape, generator, device=device, dtype=dtype)

    def noise_prior(self, t: float, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        """x_t = B^T (s(t) B eps), eps ~ N(0, I): the law of x_t when a(t) x_0 is negligible (the prior of a
        sampling grid that starts at t < 1, docs/math.md "Time grids")."""
        dtype = dtype or torch.float32
        eps = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        m = self.marginal(torch.full((1,), float(t), dtype=torch.float64), eps[:1], derivatives=False)
        if m.scalar:
            return eps * m.s
        return self.from_basis(self.to_basis(eps) * m.s)

    def prior_logp(self, x1: torch.Tensor) -> torch.Tensor:
        """log p(x_1) ``(batch,)`` nats under :meth:`sample_prior`'s law N(0, B^T diag(s(1)^2) B)."""
        m = self.marginal(torch.ones(1, dtype=torch.float64), x1[:1], derivatives=False)
        c = self.to_basis(x1.to(torch.float64))
        var = (m.s64 ** 2).expand_as(c)
        return (-0.5 * (c * c / var + torch.log(2 * math.pi * var))).flatten(1).sum(1)

    # ------------------------------------------------------ network target
    def target(self, x0, eps, t):
        m = self.marginal(t, x0, derivatives=self.parameterization.needs_derivatives)
        p = self.parameterization
        if p.prediction in ("x0", "eps"):
            return p.target(x0, eps, m.a, m.s)
        if self.basis.identity or m.scalar:
            return p.target(x0, eps, m.a, m.s, m.da, m.ds)
        return self.from_basis(p.target(self.to_basis(x0), self.to_basis(eps), m.a, m.s, m.da, m.ds))

    def to_x0(self, output, x_t, t, marginal: Marginal | None = None):
        """x0_hat from the network output (exact conversion at the marginal of ``t``)."""
        p = self.parameterization
        if p.prediction == "x0":
            return output
        m = marginal if marginal is not None else self.marginal(t, x_t, derivatives=p.needs_derivatives)
        kx, ko = p.x0_coefficients(m.a, m.s, m.da, m.ds)
        if self.basis.identity or (not isinstance(kx, torch.Tensor) and not isinstance(ko, torch.Tensor)):
            return lincomb(x_t, kx, output, ko)
        return self.from_basis(self.to_basis(x_t) * kx + self.to_basis(output) * ko)

    def loss_weight(self, t):
        """Per-sample weight ``(batch,)`` when the weight is one scalar per time; per-coefficient weights are
        applied by :meth:`training_loss`."""
        return None

    def training_loss(self, output, x0, eps, x_t, t) -> torch.Tensor:
        """Per-sample loss ``(batch,)``: the family's loss of output vs :meth:`target`, weighted per basis
        coefficient by the parameterisation's weighting (in the basis, where the weights are diagonal)."""
        from .families import get_family

        p = self.parameterization
        family = get_family(self.family)
        tgt = self.target(x0, eps, t)
        if p.weighting == "none":
            return family.loss(output, tgt)
        m = self.marginal(t, x0, derivatives=p.needs_derivatives)
        w = p.loss_weight(m.a64, m.s64, m.da64, m.ds64).to(output.dtype)
        if w[0].numel() == 1:
            return family.loss(output, tgt) * w.reshape(-1)
        err = (self.to_basis(output) - self.to_basis(tgt)) ** 2 * w
        return err.reshape(err.shape[0], -1).mean(1)
