"""The small helper every sampler rule is written on (k-diffusion style: a rule is a plain loop).

:class:`Sampling` owns what all rules share: the checked grid, one time tensor per grid point, the
corruption's per-grid coefficient table (asked for once, explicitly, when the corruption is
linear-Gaussian), the predictions (with clamping, q_theta draws and the model-call count), the callback
and the last step, which returns the prediction's mean (docs/math.md, "The last step")::

    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback)
    x = x_init
    for i in run:                                   # i = 0 .. N-1, stepping times[i] -> times[i+1]
        pred = run.predict(x, i)                    # x0_hat ~ q_theta(x_0 | x_t), one model call
        x = run.final(pred) if run.last(i) else run.forward(pred.x0_hat, run.noise(x, pred.x0_hat, i), i + 1)
        run.report(i, x, pred)

States may be tensors or mappings of parts (a product's; the batch size is read with :mod:`udm.batch`). The last
step maps the prediction to data with the corruption's ``to_data`` when it has one (a latent corruption rounds its
latent x0_hat to tokens there, and only there).

A rule may keep any history between iterations, call :meth:`Sampling.predict` several times per step
(at grid points or, with :meth:`Sampling.point`, anywhere), and reads ``run.nfe`` for the calls made.
:func:`sample_loop` runs a memoryless one-step rule ``step(ctx, x_t, x0_hat, t, s) -> x_s`` on it.

A corrector (:class:`~udm.samplers.Corrector`; ``corrector=`` or the sampler call's) runs in :meth:`Sampling.report`
after every step but the last, at the time the step reached, and its result is written back into the state tensor
the rule passed, so the rule's next step starts from the corrected state without knowing about it (its model calls
count in ``run.nfe``). Such a rule must call ``run.report(i, x, pred)`` at the end of every step (every built-in
does) and keep the state in a tensor of its own (not ``x_init``).

Steps that change nothing cost no model call (docs/howto-sampler.md, "Model calls"): when the corruption
declares ``time_invariant_posterior`` (q(x_0 | x_t) is the same function of x_t at every t, as for masking)
and the state has not changed since the last prediction (made at another time), :meth:`Sampling.predict`
returns that prediction again; when the corruption's ``uncorrupted(x_t)`` says no row carries any
corruption, x0_hat = x_t. Neither counts in ``run.nfe`` (model calls); ``run.reused`` counts the predictions
served without one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..batch import batch_device, batch_size
from ..denoiser import Prediction
from ..errors import CapabilityError, ConfigError
from ..time import check_grid
from ._conditioning import warn_if_ill_conditioned
from ._correct import current_corrector, current_draws
from ._noise import PerSampleGenerator, active as per_sample_active

__all__ = ["SamplerStep", "Sampling", "Point", "sample_loop", "require", "StepContext"]


@dataclass
class SamplerStep:
    """What ``callback`` receives after each step."""

    index: int  #: 0-based step number
    steps: int  #: total number of steps
    t: float  #: the time stepped from
    s: float  #: the time stepped to
    x: Any  #: the new state x_s (x0_hat on the last step to 0)
    x0_hat: Any  #: the prediction made at t
    nfe: int = 0  #: model calls made so far (this step included)
    reused: int = 0  #: predictions served so far without a model call (unchanged or uncorrupted states)


@dataclass
class Point:
    """One time of the sampling run: its value, the ``(batch,)`` float64 tensor the corruption and
    denoiser see, and (linear-Gaussian corruptions) the coefficients there."""

    value: float
    t: torch.Tensor
    marginal: Any = None


def require(corruption: Any, rule: str, *caps: str) -> None:
    """Raise :class:`CapabilityError` when ``corruption`` lacks any of ``caps``."""
    from ..corruption import capabilities, lacks

    have = capabilities(corruption)
    missing = [c for c in caps if c not in have]
    if missing:
        raise CapabilityError(
            f"sampler rule {rule!r}: {lacks(corruption, caps, missing)}. Choose a sampler the corruption supports "
            f"(`udm plugins` lists them per corruption) or implement the missing method."
        )


def _batch(x: Any) -> tuple[int, torch.device]:
    return batch_size(x), batch_device(x)


class Sampling:
    """The shared state of one sampling run (see the module docstring).

    Args:
        denoiser: a :class:`udm.Denoiser`, an object with ``predict(x_t, t, generator) -> Prediction``,
            or a callable ``(x_t, t, generator) -> x0_hat``.
        corruption: the forward corruption.
        times: a strictly decreasing grid ``(N + 1,)`` in [0, 1] (the time type's ``grid``).
        x_init: x at ``times[0]``.
        generator: every draw's generator.
        callback: receives a :class:`SamplerStep` after each step.
        clamp: clamp x0_hat to the corruption's ``data_range`` (with a q_theta variance: its mean, and the draw
            moves with it, so that clamping does not cut the variance's noise).
        reuse: serve a prediction without a model call when the state has not changed (see the module
            docstring); ``None``: when the corruption declares ``time_invariant_posterior``. A rule whose
            "no change" can depend on the drawn x0_hat must pass ``False``. Always off with a
            :class:`~udm.samplers.PerSampleGenerator` (whether a call is skipped depends on the whole batch).
        corrector: a :class:`~udm.samplers.Corrector` applied after every step but the last (default: the one
            the sampler call was given, if any).
    """

    def __init__(self, denoiser: Any, corruption: Any, times: Any, x_init: Any, *,
                 generator: torch.Generator | None = None, callback: Callable[[SamplerStep], Any] | None = None,
                 clamp: bool = False, reuse: bool | None = None, corrector: Any = None) -> None:
        if isinstance(generator, PerSampleGenerator) and not per_sample_active():
            raise CapabilityError("Sampling: a udm.PerSampleGenerator must be used inside a sampler call (a rule "
                                  "decorated with @udm.samplers.requires, a udm.SamplerSpec or udm.sample); got it in a "
                                  "bare Sampling run, where its draws would not be split per sample. Decorate the "
                                  "rule with @requires(...) or wrap the call in udm.samplers.per_sample_draws(generator).")
        self.grid = check_grid(times)
        self.values: list[float] = self.grid.tolist()
        self.steps = len(self.values) - 1
        self.denoiser, self.corruption, self.generator = denoiser, corruption, generator
        self.callback, self.clamp = callback, clamp
        self.batch, self.device = _batch(x_init)
        self.like = x_init
        self.nfe = 0  #: model calls made
        self.reused = 0  #: predictions served without a model call
        self.index = 0  #: the step being taken (kept current by iteration)
        self.linear_gaussian = callable(getattr(corruption, "grid_table", None)) and isinstance(x_init, torch.Tensor)
        #: linear-Gaussian corruptions: the coefficients of the whole grid, float64 (rows = grid points)
        self.table = corruption.grid_table(self.grid, x_init) if self.linear_gaussian else None
        ms = corruption.marginals(self.grid, x_init, self.table) if self.linear_gaussian else [None] * len(self.values)
        # one (batch,) float64 time tensor per grid point, made in two ops for the whole grid
        rows = self.grid.to(self.device)[:, None].repeat(1, self.batch).unbind(0)
        self.points = [Point(v, t, m) for v, t, m in zip(self.values, rows, ms)]
        self._predict = getattr(denoiser, "predict", None)
        self._fast = self._predict is not None and getattr(denoiser, "accepts_marginal", False)
        rng = getattr(corruption, "data_range", None)
        self._range = rng if clamp and rng is not None else None
        self._posterior: list | None = None
        declared = bool(getattr(corruption, "time_invariant_posterior", False))
        # a PerSampleGenerator needs the same draws in every row whatever the batch: no batch-wide skipping
        self._reuse = (declared if reuse is None else bool(reuse)) and isinstance(x_init, torch.Tensor) \
            and not isinstance(generator, PerSampleGenerator)
        self._uncorrupted = getattr(corruption, "uncorrupted", None) if self._reuse else None
        self._to_data = getattr(corruption, "to_data", None)
        self._last: tuple[Any, float, Prediction] | None = None  # (state, time, prediction) of the last call
        self._shared: tuple[Any, int, Prediction] | None = None  # a prediction handed on by :meth:`share`
        warn_if_ill_conditioned(denoiser, corruption, self.table, self.values[0], self._range is not None)
        self.corrector = corrector if corrector is not None else current_corrector()
        self.draws = current_draws()  #: where q_theta's draws are used (the sampler call's ``draws``)
        if self.draws != "steps" and self.values[-1] != 0.0:
            raise ConfigError(f"sampler option draws={self.draws!r}: the grid must end at t = 0 (the last step, which "
                              f"draws); got a grid ending at t = {self.values[-1]:g}. Append 0 to times, or use "
                              f"draws='steps'.")
        self._reported = -1  # the last step reported (a corrector needs every step reported)
        self._corrector_state = self._start_corrector() if self.corrector is not None else None

    def _start_corrector(self) -> Any:
        missing = self.corrector.missing(self.corruption)
        if missing:
            from ..corruption import lacks

            raise CapabilityError(f"corrector {self.corrector.name!r}: {lacks(self.corruption, missing, missing)}. "
                                  f"Choose a corrector the corruption supports.")
        if not isinstance(self.like, torch.Tensor):
            raise CapabilityError(f"corrector {self.corrector.name!r}: the sampler's state must be a tensor (the "
                                  f"corrected state is written back into it); got {type(self.like).__name__}. Sample "
                                  f"this corruption without a corrector.")
        return self.corrector.start(self)

    # ---------------------------------------------------------------- grid
    def __iter__(self) -> Iterator[int]:
        for i in range(self.steps):
            if self.corrector is not None and i > 0 and self._reported != i - 1:
                raise CapabilityError(f"corrector {self.corrector.name!r}: the sampler rule must call run.report(i, x, "
                                      f"pred) at the end of every step (the corrector runs there); got no report after "
                                      f"step {i - 1}. Add the call to the rule's loop.")
            self.index = i
            yield i

    def last(self, i: int) -> bool:
        """Whether step i lands on t = 0 (it must return the prediction, not a corrupted state)."""
        return self.values[i + 1] == 0.0

    def point(self, value: float) -> Point:
        """A :class:`Point` at any time (e.g. an ODE solver's midpoint), coefficients computed on demand."""
        m = self.corruption.marginal(torch.tensor([value], dtype=torch.float64), self.like) \
            if self.linear_gaussian else None
        return Point(value, torch.full((self.batch,), value, dtype=torch.float64, device=self.device), m)

    def pair_table(self, fn: Callable[..., Any], *args: Any) -> list[tuple[Any, ...]]:
        """``fn(table[:-1], table[1:], *args)`` on the whole grid at once (e.g. the corruption's
        ``posterior_coefficients`` or ``refresh_amounts``), returned per step i as a tuple cast for the data:
        Python floats when the coefficients are scalars, else tensors ``(1, *cshape)``."""
        outs = fn(self.table.rows(0, self.steps), self.table.rows(1, self.steps + 1), *args)
        n = self.steps
        if all(o.numel() == n for o in outs):
            cols = [o.reshape(-1).tolist() for o in outs]
            return list(zip(*cols))
        like = self.like
        cols = [[o[i:i + 1].to(device=like.device, dtype=like.dtype) for i in range(n)] for o in outs]
        return list(zip(*cols))

    def _p(self, where: int | Point) -> Point:
        return self.points[where] if isinstance(where, int) else where

    # ------------------------------------------------------------- predict
    def predict(self, x: Any, where: int | Point) -> Prediction:
        """x0_hat at grid point ``where`` (an index) or a :class:`Point`: one model call, or none when the state
        is unchanged since the last call or uncorrupted (with reuse on; see the module docstring)."""
        time = self._p(where).value
        if self._shared is not None:
            state, at, shared = self._shared
            self._shared = None
            if isinstance(where, int) and where == at and state.shape == x.shape and torch.equal(state, x):
                self.reused += 1
                return shared
        if self._reuse:
            again = self._again(x, time)
            if again is not None:
                self.reused += 1
                return again
        pred = self._call(x, where)
        if self._reuse:
            self._last = (x.clone(), time, pred)
        return pred

    def share(self, x: Any, where: int, pred: Prediction) -> None:
        """Serve ``pred`` to the next :meth:`predict` at grid point ``where`` if its state equals ``x`` (no model call).
        Valid when ``pred``'s x0_hat is a draw of q(x_0 | x) too: a same-time refresh built x from that x0_hat
        (docs/math.md, "The SDE view and correctors")."""
        self._shared = (x.clone(), where, pred)

    def _again(self, x: Any, time: float) -> Prediction | None:
        """The prediction for ``x`` at ``time`` that needs no model call, if any: the last call's, made at another
        time on the same state (a second prediction at the same time and state is a new call, a new draw)."""
        if self._last is not None and self._last[1] != time and self._last[0].shape == x.shape \
                and torch.equal(self._last[0], x):
            return self._last[2]
        if self._uncorrupted is not None and bool(self._uncorrupted(x).all()):
            return Prediction(x.clone())
        return None

    def _call(self, x: Any, where: int | Point) -> Prediction:
        p = self._p(where)
        self.nfe += 1
        if self._fast:
            pred = self._predict(x, p.t, self.generator, marginal=p.marginal)
        elif self._predict is not None:
            pred = self._predict(x, p.t, self.generator)
        else:
            pred = Prediction(self.denoiser(x, p.t, self.generator))
        if self._range is not None:
            if pred.mean is not None and pred.variance is not None:  # a q_theta draw: clamp its mean, keep its noise
                clamped = pred.mean.clamp(*self._range)  # (Analytic-DPM clamps x0_pred, then adds the variance)
                pred.x0_hat, pred.mean = pred.x0_hat + (clamped - pred.mean), clamped
            else:
                pred.x0_hat = pred.x0_hat.clamp(*self._range)
                if pred.mean is not None:
                    pred.mean = pred.mean.clamp(*self._range)
        if self.draws != "steps":
            if pred.mean is None and pred.params is not None:  # a family without a mean (categorical: a draw)
                raise CapabilityError(
                    f"sampler option draws={self.draws!r}: draws other than 'steps' apply to a q_theta with a mean and "
                    f"a variance (a Gaussian family); got {type(self.corruption).__name__}, whose q_theta has no mean "
                    f"(its x0_hat is already a draw, e.g. categorical). Use draws='steps'.")
            if pred.mean is None or pred.variance is None:
                raise CapabilityError(
                    f"sampler option draws={self.draws!r}: the last step draws from q_theta, so the denoiser must "
                    f"give q_theta a variance; got a prediction without one (mean "
                    f"{'given' if pred.mean is not None else 'missing'}, variance missing). Use "
                    f"udm.Denoiser(net, corruption, time_type, variance=...) (e.g. a fitted udm.VarianceTable), "
                    f"sample.variance in a run, or draws='steps'.")
            if self.draws == "last":  # the rules step with the mean; the draw waits for the last step
                pred = replace(pred, x0_hat=pred.mean, draw=pred.x0_hat, eps_hat=None, score=None)
        return pred

    def final(self, pred: Prediction) -> Any:
        """What the last step returns: q_theta's mean where it has one (no draw), else x0_hat (with ``draws`` =
        ``last`` or ``all``: q_theta's draw, docs/math.md "The last step"); mapped to the data
        by the corruption's ``to_data`` when its states are not data (a latent corruption rounds its latent
        x0_hat to tokens here, and only here)."""
        if self.draws == "steps":
            x0 = pred.mean if pred.mean is not None else pred.x0_hat
        else:  # draws="last"/"all": q_theta's draw (a prediction served again keeps the one it was made with)
            x0 = pred.draw if pred.draw is not None else pred.x0_hat
        return self._to_data(x0) if self._to_data is not None else x0

    def report(self, i: int, x: Any, pred: Prediction | Any) -> None:
        """End of step i with the new state ``x``: run the corrector (every step but the last, written back into
        ``x``), then the callback."""
        if self.corrector is not None and i != self._reported and not self.last(i) \
                and self.corrector.applies(i, self.steps):
            self._write_back(x, self.corrector.correct(self, x, i + 1, pred, self._corrector_state))
        self._reported = i
        if self.callback is not None:
            x0 = pred.x0_hat if isinstance(pred, Prediction) else pred
            self.callback(SamplerStep(i, self.steps, self.values[i], self.values[i + 1], x, x0, self.nfe,
                                      self.reused))

    def _write_back(self, x: Any, new: Any) -> None:
        """Put the corrected state into the rule's own state tensor ``x`` (never into ``x_init``)."""
        if not isinstance(x, torch.Tensor) or x.shape != new.shape or x.dtype != new.dtype:
            raise CapabilityError(f"corrector {self.corrector.name!r}: the corrected state must be a tensor shaped and "
                                  f"typed like the rule's state; got {type(new).__name__} "
                                  f"{tuple(getattr(new, 'shape', ()))} for {tuple(getattr(x, 'shape', ()))}. Return x's "
                                  f"shape and dtype from the corrector's step.")
        if x.untyped_storage().data_ptr() == self.like.untyped_storage().data_ptr():
            raise CapabilityError(f"corrector {self.corrector.name!r}: the rule's state after a step must be a new "
                                  f"tensor; got the starting batch x_init itself, which the corrector would overwrite. "
                                  f"Return a new tensor from the rule's step (e.g. x.clone()).")
        if new is not x:
            x.copy_(new)

    # ------------------------------------------------- corruption at a point
    def forward(self, x0: Any, eps: Any, where: int | Point) -> Any:
        """F(x0, eps) at ``where``."""
        p = self._p(where)
        if p.marginal is not None:
            return self.corruption.apply(p.marginal, x0, eps)
        return self.corruption.forward(x0, eps, p.t)

    def noise(self, x: Any, x0: Any, where: int | Point) -> Any:
        """eps_hat ~ p(eps | x_t = x, x_0 = x0) at ``where``."""
        p = self._p(where)
        if p.marginal is not None:
            return self.corruption.invert_noise(p.marginal, x, x0, self.generator)
        return self.corruption.noise_posterior(x, x0, p.t, self.generator)

    def posterior(self, x: Any, x0: Any, i: int) -> Any:
        """A draw of p(x_s | x_t = x, x_0 = x0) for step i (grid point i to i + 1)."""
        pt, ps = self.points[i], self.points[i + 1]
        if pt.marginal is not None:
            if self._posterior is None:
                self._posterior = self.pair_table(self.corruption.posterior_coefficients)
            return self.corruption.posterior_step(pt.marginal, ps.marginal, x, x0, self.generator, self._posterior[i])
        return self.corruption.posterior(x, x0, pt.t, ps.t, self.generator)

    def velocity(self, x0: Any, eps: Any, where: int | Point) -> Any:
        """d/dt F_t(x0, eps) at ``where`` (closed form for linear-Gaussian corruptions, else forward-mode AD)."""
        p = self._p(where)
        if p.marginal is not None:
            return self.corruption.velocity(p.marginal, x0, eps)
        c = self.corruption
        _, v = torch.func.jvp(lambda tt: c.forward(x0, eps, tt), (p.t,), (torch.ones_like(p.t),))
        return v


#: the context a :func:`sample_loop` step receives (``ctx.corruption``, ``ctx.generator``, ``ctx.index``, ...)
StepContext = Sampling


def sample_loop(step: Callable[..., Any], denoiser: Callable[..., Any], corruption: Any, times: Any, x_init: Any, *,
                generator: torch.Generator | None, callback: Callable[[SamplerStep], Any] | None = None,
                clamp: bool = False) -> Any:
    """Run a memoryless rule ``step(ctx, x_t, x0_hat, t, s) -> x_s`` over the decreasing grid ``times``.

    ``t`` and ``s`` are float64 tensors ``(batch,)``; ``ctx`` is the :class:`Sampling` run (``ctx.corruption``,
    ``ctx.generator``, ``ctx.index``, ``ctx.denoiser``). The last step to t = 0 returns the prediction.
    """
    run = Sampling(denoiser, corruption, times, x_init, generator=generator, callback=callback, clamp=clamp)
    x = x_init
    for i in run:
        pred = run.predict(x, i)
        x = run.final(pred) if run.last(i) else step(run, x, pred.x0_hat, run.points[i].t, run.points[i + 1].t)
        run.report(i, x, pred)
    return x
