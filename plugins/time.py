"""The built-in time types: ``discrete`` (T steps, DDPM/DDIM) and ``continuous`` (t in [t_min, 1]).

Both take their sampling grids' spacing from one table, :data:`udm.grids.SPACINGS` (``uniform``, ``quadratic``,
``trailing``, ``logsnr``, ``karras``, and any spacing added there); docs/math.md, "Time grids".
"""

from __future__ import annotations

import torch

import udm
from udm.errors import ConfigError
from udm.grids import SPACINGS, GridRequest, spacing_times


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


class _SpacingNames:
    """The spacing names a grid accepts, read from :data:`udm.grids.SPACINGS` when asked, on the class (the
    configuration check reads the registered class) as on an instance."""

    def __get__(self, obj: object, owner: type) -> tuple[str, ...]:
        return (*SPACINGS, "optimal")


class _Spaced:
    """Time types whose grids take every entry of :data:`udm.grids.SPACINGS`, and ``optimal``, which udm.sample
    chooses from a fitted variance table."""

    spacings = _SpacingNames()


class Discrete(_Spaced, udm.TimeType):
    """T discrete steps: t_n = n / T, n = 0..T (DDPM).

    Training draws n ~ U{1..T}. ``grid(N)`` is a sub-grid of N + 1 points ending at n = 0 (DDIM's sub-sequence
    trick): the spacing's times rounded to distinct indices n_i = round(T t_i). ``uniform`` is the stride
    n_i = round(T (N - i)/N) (= diffusers' ``trailing``; ``trailing`` gives the same grid), ``quadratic``
    n_i = round(T ((N - i)/N)^2); ``logsnr`` and ``karras`` end at n = 1; ``optimal`` is chosen from a fitted
    variance table by udm.sample (Analytic-DPM's trajectory). The model sees the index n as a float.
    Index convention: udm's n is diffusers' timestep index + 1 (udm's alpha_bar_n multiplies n factors).
    """

    name = "discrete"

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
        t = spacing_times(spacing, GridRequest(steps, 0.0, 1.0 / self.steps, corruption))
        top = int(torch.round(t[0] * self.steps))
        if steps > top:
            raise ConfigError(f"time discrete: grid: steps must be at most {top} with spacing {spacing!r} (the grid "
                              f"starts at n = {top}); got {steps}. Use fewer steps or spacing 'uniform'.")
        pos = torch.cat([t * self.steps, torch.zeros(1, dtype=torch.float64)])
        return self.to_time(_strictly_decreasing_ints(pos, top)).to(device)

    def encode(self, t):
        return t * self.steps

    def to_index(self, t: torch.Tensor) -> torch.Tensor:
        """n = round(t T) as ``LongTensor``."""
        return torch.round(torch.as_tensor(t, dtype=torch.float64) * self.steps).long()

    def to_time(self, n: torch.Tensor) -> torch.Tensor:
        """t = n / T as float64."""
        return torch.as_tensor(n).to(torch.float64) / self.steps


class Continuous(_Spaced, udm.TimeType):
    """Continuous time t in [t_min, 1].

    Training draws t = t_min + (1 - t_min) u with u ~ U(0, 1), or with ``sampling="stratified"`` the
    low-discrepancy draw u_i = (u_0 + i / B) mod 1 (Kingma et al. 2021), which lowers the loss
    variance. ``grid(N)`` puts N model calls at the spacing's times, then 0 (docs/math.md, "Time grids"):
    ``uniform`` t_i = t_min + (1 - t_min)(N - i)/N and ``quadratic`` (squared fractions) stride from t = 1 and
    never spend a call at t_min; ``trailing`` is the stride (N - i)/N; ``logsnr`` and ``karras`` run from the
    first noise level to t_min (they need a corruption with a ``noise_schedule``); ``optimal`` is chosen from a
    fitted variance table by udm.sample. The model sees ``scale * t`` (default 1000, the discrete scale).
    """

    name = "continuous"

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
        t = spacing_times(spacing, GridRequest(steps, self.t_min, max(self.t_min, 1e-6), corruption))
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).to(device)

    def encode(self, t):
        return t * self.scale


@udm.hookimpl
def udm_register_time_types(register):
    register(Discrete)
    register(Continuous)
