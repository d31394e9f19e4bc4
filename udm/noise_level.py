"""Condition a network on the noise level (sigma_t or the log-SNR) instead of an encoded time.

The built-in time types feed the network an encoded time (``discrete``: n = t T; ``continuous``: 1000 t).
A network conditioned on the noise level itself does not depend on how time maps to noise, so it can be
sampled on another schedule with the same noise levels, and it matches models trained elsewhere on sigma
(EDM, k-diffusion) or on the log-SNR (VDM). :class:`NoiseLevelTime` wraps any time type: the training
times, the grids and everything else are the wrapped type's; only :meth:`~NoiseLevelTime.encode` changes
(docs/reference.md, "Time encodings")::

    time = udm.NoiseLevelTime(reg.create("time", "discrete", steps=1000), corruption, "log_snr")
    udm.Trainer(network, corruption, time)        # trains on (x_t, lambda_t)
    udm.sample(network, corruption, time, ...)    # samples with the same encoding
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch

from .errors import CapabilityError, ConfigError, did_you_mean
from .time import TimeType

__all__ = ["NoiseLevelTime", "NoiseEncoding"]

NoiseEncoding = Literal["sigma", "log_snr"]
ENCODINGS: tuple[str, ...] = get_args(NoiseEncoding)


class NoiseLevelTime(TimeType):
    """A time type whose network input is the corruption's noise level (see the module docstring).

    Args:
        base: the time type that draws training times and builds grids (``discrete``, ``continuous``, ...).
        corruption: a corruption with an affine ``schedule(t)`` (alpha_t, sigma_t), e.g. ``gaussian``.
        encoding: ``sigma`` (sigma_t) or ``log_snr`` (lambda_t = log(alpha_t^2 / sigma_t^2), clipped to
            [-clip, clip]: it is -inf where alpha = 0, e.g. cosine and flow at t = 1, and +inf at t = 0).
        clip: the log-SNR clip (20: alpha_bar between 2e-9 and 1 - 2e-9).
        scale: the network sees ``scale *`` the encoding (a sinusoidal time embedding built for inputs in
            [0, 1000], such as :func:`udm.nn.timestep_embedding`, resolves a wider range better).
    """

    name = "noise_level"

    def __init__(self, base: TimeType, corruption: Any, encoding: NoiseEncoding = "log_snr", *, clip: float = 20.0,
                 scale: float = 1.0) -> None:
        if encoding not in ENCODINGS:
            raise ConfigError(f"NoiseLevelTime: encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}."
                              f"{did_you_mean(str(encoding), ENCODINGS)}")
        if not callable(getattr(corruption, "schedule", None)):
            cname = getattr(corruption, "name", type(corruption).__name__)
            raise CapabilityError(f"NoiseLevelTime: the corruption must offer an affine schedule(t) (alpha_t, "
                                  f"sigma_t); got {cname!r}, which has none. Condition on time (the time type's own "
                                  f"encode).")
        if not clip > 0 or not scale > 0:
            raise ConfigError(f"NoiseLevelTime: clip and scale must be > 0; got clip={clip!r}, scale={scale!r}.")
        self.base, self.corruption, self.encoding = base, corruption, encoding
        self.clip, self.scale = float(clip), float(scale)
        self.spacings = base.spacings

    def __repr__(self) -> str:
        return f"NoiseLevelTime({self.base!r}, encoding={self.encoding!r})"

    def __getattr__(self, name: str) -> Any:  # to_index, to_time, steps, t_min, ... of the wrapped type
        if name in ("base", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def sample_train(self, batch, generator, device=None):
        return self.base.sample_train(batch, generator, device=device)

    def grid(self, steps, *, spacing="uniform", corruption=None, device=None):
        return self.base.grid(steps, spacing=spacing, corruption=corruption, device=device)

    def encode(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t, or the clipped log-SNR, times ``scale``: float ``(batch,)`` in t's dtype."""
        sch = self.corruption.schedule(torch.as_tensor(t, dtype=torch.float64))
        if self.encoding == "sigma":
            level = sch.sigma
        else:
            level = (2 * (torch.log(sch.alpha) - torch.log(sch.sigma))).clamp(-self.clip, self.clip)
        return (self.scale * level).to(torch.as_tensor(t).dtype)
