"""Small building blocks shared by the built-in networks (and available to users' own)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["timestep_embedding", "Adapter"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM) of time encodings ``(batch,)`` -> ``(batch, dim)``:
    [cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / half), k < half = dim // 2 (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Adapter(torch.nn.Module):
    """Bring your own network: wrap one whose signature is not ``(x_t, time_input) -> output``.

    udm calls every network as ``network(x_t, time_input)``, where ``time_input`` is the time type's encoding
    of t (``discrete``: the step index n = t T; ``continuous``: 1000 t; :class:`udm.NoiseLevelTime`: sigma_t
    or the log-SNR), and reads the output as the corruption's prediction target (x_0, eps, v, score or flow,
    chosen with the corruption's ``prediction``). An adapter maps between that and your module::

        net = udm.nn.Adapter(my_unet, time=lambda tau: tau.long() - 1,   # diffusers' timestep index
                             output=lambda out: out.sample)             # its output dataclass
        net = udm.nn.Adapter(edm_net, call=lambda m, x, tau: m(x, sigma=tau))  # with NoiseLevelTime("sigma")

    Args:
        module: the network (its parameters and buffers become the adapter's, so training, EMA, checkpoints
            and ``.to(device)`` work unchanged).
        time: ``time_input (batch,) -> what the module takes`` (default: unchanged).
        call: ``(module, x_t, converted_time) -> raw output`` (default: ``module(x_t, converted_time)``).
        output: ``raw output -> tensor`` (default: the tensor itself, ``.sample`` of a dataclass output, or the
            first element of a tuple).
    """

    def __init__(self, module: torch.nn.Module, *, time: Any = None, call: Any = None, output: Any = None) -> None:
        super().__init__()
        self.module = module
        self._time, self._call, self._output = time, call, output

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = self._time(t) if self._time is not None else t
        raw = self._call(self.module, x, tau) if self._call is not None else self.module(x, tau)
        if self._output is not None:
            return self._output(raw)
        if isinstance(raw, torch.Tensor):
            return raw
        if hasattr(raw, "sample"):
            return raw.sample
        if isinstance(raw, (tuple, list)):
            return raw[0]
        raise ConfigError(f"udm.nn.Adapter: the module's output must be a tensor, a tuple or have .sample; got "
                        f"{type(raw).__name__}. Pass output=<a function returning the prediction tensor>.")
