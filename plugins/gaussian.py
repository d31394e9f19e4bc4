"""The ``gaussian`` corruption: x_t = alpha_t x_0 + sigma_t eps, eps ~ N(0, I).

The linear-Gaussian layer with the identity basis and one scalar amplitude pair per time
(:class:`udm.LinearGaussian`), which derives the noise posterior, the DDPM posterior, eta-refresh, the
score, the SDE coefficients and every prediction target. Amplitudes, not variances: ``alpha_t`` is the
DDPM paper's sqrt(alpha_bar_t), ``sigma_t`` its sqrt(1 - alpha_bar_t). The amplitudes come from a
schedule plugin (``linear``, ``cosine``, ``vp``, ``ve``, ``flow``, ``table``; ``udm plugins`` lists them)::

    corruption: {name: gaussian, schedule: cosine}
    corruption: {name: gaussian, schedule: {name: linear, beta_end: 0.012}, prediction: eps}
    corruption: {name: gaussian, schedule: {name: table, config: path/to/scheduler_config.json}}

Prediction targets: ``x0``, ``eps``, ``v`` (the default, non-singular for every schedule), ``score``,
``flow``; a choice that is singular on the schedule (``eps`` where alpha reaches 0, as for ``cosine`` and
``flow`` at t = 1) is refused at construction with the safe choices.
"""

from __future__ import annotations

from typing import Any

import torch

import udm
from udm.parameterization import PredictionName, WeightingName


class GaussianCorruption(udm.LinearGaussian):
    """Affine Gaussian noise x_t = alpha_t x_0 + sigma_t eps (DDPM, DDIM, score SDEs, flow matching).

    Args:
        schedule: a schedule plugin: its name (``linear``, ``cosine``, ``vp``, ``ve``, ``flow``, ``table``),
            a mapping ``{name: ..., **options}``, or a :class:`udm.Schedule` instance.
        prediction: what the network outputs: ``x0`` | ``eps`` | ``v`` | ``score`` | ``flow``.
        weighting: x0-equivalent loss weight: ``none`` (plain MSE of the prediction) | ``x0`` | ``eps``
            (SNR) | ``v`` (SNR + 1) | ``min_snr`` (min(SNR, gamma)) | ``truncated_snr`` (max(SNR, 1)).
        gamma: the min-SNR gamma.
        data_range: ``[low, high]`` for optional clamping of x0_hat, e.g. ``[-1, 1]`` for images.
    """

    name = "gaussian"
    nominal_shape = (1,)

    def __init__(self, schedule: udm.PluginSpec["schedule"] = "linear", prediction: PredictionName = "v",
                 weighting: WeightingName = "none", gamma: float = 5.0,
                 data_range: tuple[float, float] | list[float] | None = None) -> None:
        super().__init__(prediction, weighting, gamma)
        self.noise_schedule: udm.Schedule = udm.build_plugin("schedule", schedule, where="corruption gaussian: schedule")
        self.data_range = tuple(data_range) if data_range is not None else None
        self._check_parameterization()

    def __repr__(self) -> str:
        p = self.parameterization
        return f"GaussianCorruption(schedule={self.noise_schedule!r}, prediction={p.prediction!r})"

    @property
    def prediction(self) -> str:
        return self.parameterization.prediction

    def amplitudes(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.noise_schedule.amplitudes(t.to(torch.float64))

    def amplitude_derivatives(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.noise_schedule.derivatives(t.to(torch.float64))

    def schedule(self, t: torch.Tensor) -> udm.AffineSchedule:
        """alpha_t, sigma_t and their t-derivatives (float64, shaped like ``t``)."""
        return self.noise_schedule(t)

    def describe(self) -> dict[str, Any]:
        return {"schedule": repr(self.noise_schedule), **self.parameterization.describe()}


@udm.hookimpl
def udm_register_corruptions(register):
    register(GaussianCorruption)
