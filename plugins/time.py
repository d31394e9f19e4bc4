"""The built-in time types: ``discrete`` (T steps, DDPM/DDIM) and ``continuous`` (t in [t_min, 1])."""

from __future__ import annotations

import torch

import udm
from udm.errors import ConfigError


def _strictly_decreasing_ints(pos: torch.Tensor, top: int) -> torch.Tensor:
    """Round float grid positions (decreasing, pos[0] = top, pos[-1] = 0) to distinct integers."""
    n = pos.round().long()
    n[0], n[-1] = top, 0
    for i in range(len(n) - 2, 0, -1):  # push up where rounding merged neighbours
        n[i] = max(int(n[i]), int(n[i + 1]) + 1)
    for i in range(1, len(n) - 1):  # and down below the top
        n[i] = min(int(n[i]), int(n[i - 1]) - 1)
    return n


def _refuse_optimal(name: str, spacing: str) -> None:
    """``optimal`` (Analytic-DPM's trajectory) is chosen from a fitted variance table, not by the time type:
    udm.sample computes it (udm.variance_trajectory.optimal_grid)."""
    if spacing == "optimal":
        raise ConfigError(f"time {name}: spacing 'optimal' needs a fitted variance table to choose the grid; got a "
                          f"call without one. Sample with udm.sample(..., spacing='optimal', variance=<dense "
                          f"udm.VarianceTable>), or `udm sample RUN --variance analytic` after `udm fit-variance RUN "
                          f"--dense M`.")


class Discrete(udm.TimeType):
    """T discrete steps: t_n = n / T, n = 0..T (DDPM).

    Training draws n ~ U{1..T}. ``grid(N)`` is a strided sub-grid of N + 1 points from n = T to 0
    (DDIM's sub-sequence trick): ``uniform`` (n_i = round(T (N - i)/N)) or ``quadratic``
    (n_i = round(T ((N - i)/N)^2), denser near the data); ``optimal`` is chosen from a fitted variance
    table by udm.sample (Analytic-DPM's trajectory). The model sees the index n as a float.
    """

    name = "discrete"
    spacings = ("uniform", "quadratic", "optimal")

    def __init__(self, steps: int = 1000) -> None:
        self._check_steps(steps, "time discrete")
        self.steps = steps

    def __repr__(self) -> str:
        return f"Discrete(steps={self.steps})"

    def sample_train(self, batch, generator, device=None):
        n = torch.randint(1, self.steps + 1, (batch,), generator=generator, device=device)
        return n.to(torch.float64) / self.steps

    def grid(self, steps, *, spacing="uniform", corruption=None, device=None):
        self._check_steps(steps, "time discrete: grid", most=self.steps)
        self._check_spacing(spacing)
        _refuse_optimal(self.name, spacing)
        frac = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        if spacing == "quadratic":
            frac = frac**2
        return self.to_time(_strictly_decreasing_ints(frac * self.steps, self.steps)).to(device)

    def encode(self, t):
        return t * self.steps

    def to_index(self, t: torch.Tensor) -> torch.Tensor:
        """n = round(t T) as ``LongTensor``."""
        return torch.round(torch.as_tensor(t, dtype=torch.float64) * self.steps).long()

    def to_time(self, n: torch.Tensor) -> torch.Tensor:
        """t = n / T as float64."""
        return torch.as_tensor(n).to(torch.float64) / self.steps


class Continuous(udm.TimeType):
    """Continuous time t in [t_min, 1].

    Training draws t = t_min + (1 - t_min) u with u ~ U(0, 1), or with ``sampling="stratified"`` the
    low-discrepancy draw u_i = (u_0 + i / B) mod 1 (Kingma et al. 2021), which lowers the loss
    variance. ``grid(N)`` puts N points from 1 down to t_min, then 0: ``uniform``, ``quadratic``
    (denser near the data) or ``logsnr`` (uniform in log(alpha^2/sigma^2); needs a corruption with
    an affine ``schedule``). The model sees ``scale * t`` (default 1000, the discrete scale).
    """

    name = "continuous"
    spacings = ("uniform", "quadratic", "logsnr", "optimal")

    def __init__(self, t_min: float = 1e-3, sampling: str = "uniform", scale: float = 1000.0) -> None:
        if not 0 <= t_min < 1:
            raise ConfigError(f"time continuous: t_min must be in [0, 1); got {t_min!r}.")
        if sampling not in ("uniform", "stratified"):
            raise ConfigError(f"time continuous: sampling must be one of uniform, stratified; got {sampling!r}.")
        self.t_min, self.sampling, self.scale = float(t_min), sampling, float(scale)

    def __repr__(self) -> str:
        return f"Continuous(t_min={self.t_min}, sampling={self.sampling!r})"

    def sample_train(self, batch, generator, device=None):
        if self.sampling == "stratified":
            u0 = torch.rand((), generator=generator, device=device, dtype=torch.float64)
            u = (u0 + torch.arange(batch, device=device, dtype=torch.float64) / batch) % 1.0
        else:
            u = torch.rand((batch,), generator=generator, device=device, dtype=torch.float64)
        return self.t_min + (1 - self.t_min) * u

    def grid(self, steps, *, spacing="uniform", corruption=None, device=None):
        self._check_steps(steps, "time continuous: grid")
        self._check_spacing(spacing)
        _refuse_optimal(self.name, spacing)
        frac = torch.linspace(1, 0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
        t_min = max(self.t_min, 1e-6)
        if spacing == "quadratic":
            pts = t_min + (1 - t_min) * frac**2
        elif spacing == "logsnr":
            pts = self._logsnr_points(frac, t_min, corruption)
        else:
            pts = t_min + (1 - t_min) * frac
        return torch.cat([pts, torch.zeros(1, dtype=torch.float64)]).to(device)

    @staticmethod
    def _logsnr_points(frac, t_min, corruption):
        if not callable(getattr(corruption, "schedule", None)):
            name = getattr(corruption, "name", corruption)
            raise udm.CapabilityError(
                f"time continuous: spacing 'logsnr' needs a corruption with an affine schedule; got {name!r}. "
                f"Use spacing 'uniform' or 'quadratic'.")

        def logsnr(t):
            s = corruption.schedule(t)
            return (2 * (s.alpha.log() - s.sigma.log())).clamp(-40, 40)

        ends = logsnr(torch.tensor([1.0, t_min], dtype=torch.float64))
        wanted = ends[0] + (ends[1] - ends[0]) * (1 - frac)
        lo = torch.full_like(wanted, t_min)
        hi = torch.ones_like(wanted)
        for _ in range(60):  # bisection: log-SNR decreases in t
            mid = (lo + hi) / 2
            above = logsnr(mid) > wanted
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        pts = (lo + hi) / 2
        pts[0], pts[-1] = 1.0, t_min
        return pts

    def encode(self, t):
        return t * self.scale


@udm.hookimpl
def udm_register_time_types(register):
    register(Discrete)
    register(Continuous)
