"""The ``product`` corruption: data made of named parts (an image and its class label, two modalities), each
part corrupted by its own corruption on its own clock (docs/math.md, "Products"; hackable_diffusion's nested
processes, UniDiffuser's per-modality times):

    x_t = {k: F^(k)_{t_k}(x_0[k], eps_k)},    eps = {k: eps_k} independent,    t_k = c_k(t)

Batches, noises, states and network outputs are mappings part -> tensor (:mod:`udm.batch`). The loss is the sum
of the parts' losses (each weighted by ``weights[k]``, default 1), each part's as that corruption defines it.

Times (``times``):

``shared``       every part at the training time t (t_k = t);
``independent``  each part draws its own training time from the time type, so the network learns every
                 combination, including one part clean while another is noisy;
``coupled``      t_k = clamp((t - start_k) / (end_k - start_k), 0, 1) with ``windows: {part: [start, end]}``
                 (a part missing from ``windows`` has [0, 1]): the parts move on one clock, each within its
                 window (e.g. a label revealed only in the last half of generation).

The network receives each part's encoded time (a mapping; :func:`udm.time.network_time`), so it knows how
corrupted each part is. Sampling walks one grid t; the parts follow their ``c_k`` (shared and independent:
t_k = t).

**Conditioning** (:meth:`Product.condition`): a part held at t_k = 0 with given values is data, never
corrupted, so sampling the other parts gives the conditional law (class-conditional generation from the same
network, with ``independent`` training times).

Capabilities: a product offers a noise posterior, a refresh kernel or a closed-form posterior exactly when every
part does (the parts are independent given x_0, so p(eps | x_t, x_0) and p(x_s | x_t, x_0) factor over the
parts); ``fit`` fits the parts that have one. It is not linear-Gaussian and has no vector space (its states are
mappings).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import torch

import udm
from udm.batch import batch_device, batch_size
from udm.composition import Composite
from udm.errors import ConfigError
from udm.losses import per_sample_loss

__all__ = ["Product", "TIMES"]

TIMES = ("shared", "independent", "coupled")
_FACTORED = ("noise_posterior", "refresh_noise", "posterior")


class Product(Composite):
    """A mapping of parts, each with its own corruption and time (see the module docstring).

    Args:
        parts: part name (the key of the data mapping) -> corruption (name, ``{name: ..., **options}`` or
            instance).
        times: ``shared`` | ``independent`` | ``coupled`` (module docstring).
        windows: ``coupled`` only: part -> ``[start, end]``, 0 <= start < end <= 1.
        weights: part -> weight of its loss (default 1 for every part).
    """

    name = "product"
    #: a configuration ``udm plugins`` reports
    examples = ({"parts": {"point": "gaussian", "label": {"name": "mask", "vocab_size": 4}}, "times": "independent"},)
    data_kind = "parts"
    state_kind = "parts"
    family = "product"

    def __init__(self, parts: dict[str, udm.PluginSpec["corruption"]],
                 times: Literal["shared", "independent", "coupled"] = "shared",
                 windows: dict[str, list[float]] | None = None, weights: dict[str, float] | None = None) -> None:
        if not isinstance(parts, Mapping) or not parts:
            raise ConfigError(f"corruption product: parts must be a mapping part -> corruption with at least one part; "
                              f"got {parts!r}. E.g. parts: {{image: gaussian, label: mask}}.")
        self.parts = {str(k): udm.build_plugin("corruption", v, where=f"corruption product: parts.{k}")
                      for k, v in parts.items()}
        if times not in TIMES:
            raise ConfigError(f"corruption product: times must be one of {', '.join(TIMES)}; got {times!r}.")
        self.times = times
        self.windows = self._check_windows(windows)
        self.weights = self._check_weights(weights)
        self.held: dict[str, torch.Tensor] = {}
        for cap in _FACTORED:
            if all(cap in udm.capabilities(p) for p in self.parts.values()):
                self.expose(cap, getattr(self, "_" + cap))
        if any(callable(getattr(p, "fit", None)) for p in self.parts.values()):
            self.expose("fit", self._fit)

    def _check_windows(self, windows: Any) -> dict[str, tuple[float, float]]:
        if windows is None:
            return {}
        if self.times != "coupled":
            raise ConfigError(f"corruption product: windows must only be given with times 'coupled'; got times "
                              f"{self.times!r}. Remove windows or set times: coupled.")
        out = {}
        for k, w in dict(windows).items():
            if k not in self.parts:
                raise ConfigError(f"corruption product: windows.{k}: the key must be a part ({', '.join(self.parts)}); "
                                  f"got {k!r}. Name a part.")
            if not (isinstance(w, (list, tuple)) and len(w) == 2 and 0 <= float(w[0]) < float(w[1]) <= 1):
                raise ConfigError(f"corruption product: windows.{k} must be [start, end] with 0 <= start < end <= 1; "
                                  f"got {w!r}.")
            out[k] = (float(w[0]), float(w[1]))
        return out

    def _check_weights(self, weights: Any) -> dict[str, float]:
        weights = dict(weights or {})
        for k, w in weights.items():
            if k not in self.parts or isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"corruption product: weights.{k} must be a number >= 0 for a part "
                                  f"({', '.join(self.parts)}); got {k!r}: {w!r}.")
        return {k: float(weights.get(k, 1.0)) for k in self.parts}

    def __repr__(self) -> str:
        held = f", held={sorted(self.held)}" if self.held else ""
        return f"Product({', '.join(f'{k}={p!r}' for k, p in self.parts.items())}, times={self.times!r}{held})"

    def named_parts(self) -> dict[str, Any]:
        return dict(self.parts)

    # ------------------------------------------------------------ capabilities
    def capabilities(self) -> frozenset[str]:
        caps = {c for c in _FACTORED if c in self.__dict__.get("_exposed", {})}
        return frozenset(caps | ({"fit"} if callable(getattr(self, "fit", None)) else set()))

    def capability_notes(self) -> dict[str, str]:
        notes = {c: f"part {k!r} ({p.name}) lacks it" for c in _FACTORED
                 for k, p in reversed(list(self.parts.items())) if c not in udm.capabilities(p)}
        states = "the states are mappings of parts, not one tensor"
        return {**notes, "linear_gaussian": states, "schedule": states, "vector_space": states,
                "fit": "no part has statistics to fit", "masked_count": states, "nll": states, "sample_x0": states}

    # ------------------------------------------------------------------- times
    def part_times(self, t: Any) -> dict[str, torch.Tensor]:
        """Each part's time ``(batch,)`` float64 for the sampler's time ``t`` ``(batch,)`` (or the parts' own times,
        a mapping, as :meth:`train_times` draws them); held parts are at 0."""
        if isinstance(t, Mapping):
            missing = [k for k in self.parts if k not in t]
            if missing:
                raise ConfigError(f"corruption product: times must be given for every part; got none for {missing}.")
            out = {k: torch.as_tensor(t[k], dtype=torch.float64) for k in self.parts}
        else:
            t = torch.as_tensor(t, dtype=torch.float64)
            out = {k: self._window(k, t) for k in self.parts}
        for k in self.held:
            out[k] = torch.zeros_like(out[k])
        return out

    def _window(self, k: str, t: torch.Tensor) -> torch.Tensor:
        if k not in self.windows:
            return t
        start, end = self.windows[k]
        return ((t - start) / (end - start)).clamp(0.0, 1.0)

    def train_times(self, time_type: Any, batch: int, generator: torch.Generator | None, device: Any = None) -> dict:
        """Training times: one draw for every part (shared, coupled) or one per part (independent)."""
        if self.times == "independent":
            return self.part_times({k: time_type.sample_train(batch, generator, device=device) for k in self.parts})
        return self.part_times(time_type.sample_train(batch, generator, device=device))

    # --------------------------------------------------------------- contract
    def sample_noise(self, x0: Mapping[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        return {k: p.sample_noise(self._data(x0, k), generator) for k, p in self.parts.items()}

    def forward(self, x0: Mapping[str, Any], eps: Mapping[str, Any], t: Any) -> dict[str, Any]:
        times = self.part_times(t)
        n = batch_size(x0)
        return {k: self._held(k, n, batch_device(x0)) if k in self.held else
                p.forward(self._data(x0, k), eps[k], times[k]) for k, p in self.parts.items()}

    def sample_prior(self, shape: Mapping[str, Any], generator: torch.Generator | None, *, device=None,
                     dtype=None) -> dict[str, Any]:
        """x_1 of every part (``shape``: part -> ``(n, ...)``); held parts are their given values."""
        if not isinstance(shape, Mapping) or any(k not in shape for k in self.parts):
            raise ConfigError(f"corruption product: shape must be a mapping part -> (n, ...) with the parts "
                              f"{', '.join(self.parts)}; got {shape!r}. E.g. shape={{k: (n, *data_shape[k])}}.")
        out = {}
        for k, p in self.parts.items():
            if k in self.held:
                out[k] = self._held(k, int(shape[k][0]), device)
                continue
            floats = getattr(p, "data_kind", "continuous") == "continuous"
            out[k] = p.sample_prior(tuple(shape[k]), generator, device=device, dtype=dtype if floats else None)
        return out

    def training_loss(self, output: Any, x0: Mapping[str, Any], eps: Mapping[str, Any], x_t: Mapping[str, Any],
                      t: Any) -> torch.Tensor:
        """sum_k weights[k] * (part k's per-sample loss at its own time) ``(batch,)``."""
        if not isinstance(output, Mapping) or any(k not in output for k in self.parts):
            got = sorted(output) if isinstance(output, Mapping) else type(output).__name__
            raise ConfigError(f"corruption product: the network output must be a mapping with one output per part "
                              f"({', '.join(self.parts)}); got {got}. Use a model for parts, e.g. joint_mlp.")
        times = self.part_times(t)
        per = [w * per_sample_loss(self.parts[k], output[k], x0[k], eps[k], x_t[k], times[k])
               for k, w in self.weights.items() if w]
        return torch.stack(per).sum(0)

    # ------------------------------------------------ capabilities of the parts
    def _noise_posterior(self, x_t, x0, t, generator=None) -> dict[str, Any]:
        times = self.part_times(t)
        return {k: p.noise_posterior(x_t[k], x0[k], times[k], generator) for k, p in self.parts.items()}

    def _refresh_noise(self, eps, amount, generator) -> dict[str, Any]:
        return {k: p.refresh_noise(eps[k], amount, generator) for k, p in self.parts.items()}

    def _posterior(self, x_t, x0, t, s, generator) -> dict[str, Any]:
        tt, ss = self.part_times(t), self.part_times(s)
        return {k: x_t[k] if k in self.held else p.posterior(x_t[k], x0[k], tt[k], ss[k], generator)
                for k, p in self.parts.items()}

    def _fit(self, data: Mapping[str, Any]) -> None:
        for k, p in self.parts.items():
            if callable(getattr(p, "fit", None)):
                p.fit(self._data(data, k))

    def _data(self, x: Mapping[str, Any], k: str) -> Any:
        if not isinstance(x, Mapping) or k not in x:
            got = sorted(x) if isinstance(x, Mapping) else type(x).__name__
            raise ConfigError(f"corruption product: parts.{k}: the part must have data (a key {k!r} of the batch); "
                              f"got a batch with keys {got}. Name the parts after the data's keys.")
        return x[k]

    # ------------------------------------------------------------ conditioning
    def condition(self, **values: torch.Tensor) -> "Product":
        """This product with the given parts held at t = 0 with the given values (each ``(n, ...)`` or one example
        ``(1, ...)``, expanded to the batch): sampling it samples the other parts given these (module docstring).
        Shares the part corruptions (and their fitted state) with ``self``."""
        for k, v in values.items():
            if k not in self.parts:
                raise ConfigError(f"corruption product: condition: {k} must be a part ({', '.join(self.parts)}); "
                                  f"got {k!r}.")
            if not isinstance(v, torch.Tensor) or v.ndim < 1:
                raise ConfigError(f"corruption product: condition: {k} must be a tensor (n, ...) of that part's data; "
                                  f"got {type(v).__name__}.")
        held = copy.copy(self)
        held.__dict__["_exposed"] = dict(self.__dict__.get("_exposed", {}))
        for cap in list(held._exposed):  # rebind the exposed methods to the copy
            held._exposed[cap] = getattr(held, "_" + cap)
        held.held = {**self.held, **values}
        return held

    def _held(self, k: str, n: int, device: Any = None) -> torch.Tensor:
        """The held value of part k for a batch of n (one example is expanded to n rows)."""
        v = self.held[k]
        if v.shape[0] not in (1, n):
            raise ConfigError(f"corruption product: condition: {k} must have 1 or {n} rows (the batch); got "
                              f"{v.shape[0]}. Give one value for every sample, or one for all.")
        v = v.expand(n, *v.shape[1:]) if v.shape[0] != n else v
        return v.to(device) if device is not None else v


@udm.hookimpl
def udm_register_corruptions(register):
    register(Product)
