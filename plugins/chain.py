"""The ``chain`` corruption: corruptions applied one after another at the same time t (blur then noise, mask then
noise; docs/math.md, "Chains"):

    x_t = F^(n)_t( ... F^(2)_t(F^(1)_t(x_0, eps_1), eps_2) ..., eps_n)

Its capabilities are computed from the parts, and it offers exactly what is exact:

* **Linear-Gaussian parts diagonal in one basis** (every part has the same basis, or is isotropic: identity
  basis with one scalar amplitude pair, which commutes with every orthonormal basis). Per basis coefficient the
  composition is again (B x_t)_k = a_k (B x_0)_k + s_k eps_k with

      a = a_1 a_2 ... a_n,    s^2 = sum_i s_i^2 (a_{i+1} ... a_n)^2

  (the noises of the parts add up to one Gaussian), so the chain *is* a :class:`udm.LinearGaussian` and gets
  everything the layer derives (noise posterior, closed-form posterior, eta-refresh, targets, the SDE, grid
  tables): ``chain([blur(sigma=0), gaussian])`` is blurring diffusion. Its noise is that one eps ~ N(0, I).
* **Any other chain** (e.g. ``mask_pixels`` then ``gaussian``): the noise is the parts' noises
  ``{"0": eps_1, "1": eps_2, ...}``; the chain offers ``refresh_noise`` (each part's kernel, when all have one)
  and the samplers that need nothing else (``renoise``). It does **not** offer a noise posterior: p(eps_1, eps_2 |
  x_t, x_0) needs the law of the intermediate F^(1)_t(x_0, eps_1) given x_t, which no part provides; ``udm
  plugins`` and the capability errors say so.

Both: the prior is the composition x_1 = F^(n)_1(... F^(2)_1(x_1^(1), eps_2) ...) with x_1^(1) drawn from the
first part's prior (exact in law); ``fit`` fits the first part (the only one whose statistics the prior uses).
Each part must accept the kind of data the previous one produces (``tokens`` after ``tokens``, ``continuous``
after ``continuous`` or after a latent encoder).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

import udm
from udm.composition import Composite
from udm.corruption import discover_capabilities
from udm.errors import ConfigError
from udm.parameterization import PredictionName, WeightingName

__all__ = ["Chain", "LinearChain", "GeneralChain"]

#: capabilities a chain never derives, and why
_NEVER = {"masked_count": "not derived for chains (a property of a single masking corruption)",
          "nll": "not derived for chains (a structured q_theta of a single corruption)",
          "sample_x0": "not derived for chains (a structured q_theta of a single corruption)"}


def _kind_out(part: Any) -> str:
    """The kind of x_t a corruption produces (a latent corruption turns tokens into vectors)."""
    return getattr(part, "state_kind", getattr(part, "data_kind", "continuous"))


def _same_basis(a: Any, b: Any) -> bool:
    public = (lambda x: {k: v for k, v in vars(x).items() if not k.startswith("_")})  # noqa: E731
    return type(a) is type(b) and public(a) == public(b)


def _isotropic(part: Any) -> bool:
    """Identity basis and one scalar amplitude pair per time: commutes with every orthonormal basis."""
    if not getattr(part.basis, "identity", False):
        return False
    a, s = part.amplitudes(torch.tensor([0.5], dtype=torch.float64), tuple(part.nominal_shape))
    return torch.as_tensor(a).numel() == 1 and torch.as_tensor(s).numel() == 1


def _common_basis(parts: list[Any]) -> tuple[Any, str | None]:
    """(the basis all linear-Gaussian parts are diagonal in, None) or (None, why there is none)."""
    caps = [udm.capabilities(p) for p in parts]
    other = [p.name for p, c in zip(parts, caps) if "linear_gaussian" not in c]
    if other:
        return None, (f"part {other[0]!r} is not linear-Gaussian, so the chain is not: its state given x_0 is not "
                      f"Gaussian")
    mapped = [p.name for p in parts if getattr(p, "data_kind", "continuous") != "continuous"]
    if mapped:
        return None, (f"part {mapped[0]!r} does not take continuous data, so the chain is not linear-Gaussian in the "
                      f"data (a latent corruption's inner corruption may be a chain instead)")
    bases = [p.basis for p in parts if not _isotropic(p)]
    for b in bases[1:]:
        if not _same_basis(b, bases[0]):
            return None, (f"the parts are diagonal in different bases ({type(bases[0]).__name__}, "
                          f"{type(b).__name__}), so their composition is not diagonal in one")
    return (bases[0] if bases else parts[0].basis), None


class Chain(Composite):
    """Corruptions applied in order at the same t (see the module docstring).

    Args:
        parts: two or more corruptions (names, ``{name: ..., **options}`` mappings or instances), applied first
            to last.
        prediction, weighting, gamma: the network's target and loss weight when the chain is linear-Gaussian
            (:class:`udm.Parameterization`; default ``x0``, which is never singular). Other chains predict x_0.

    Building a ``Chain`` gives a :class:`LinearChain` or a :class:`GeneralChain`, whichever the parts allow.
    """

    name = "chain"
    data_kind = None  #: the first part's (set per instance; the class cannot say which data it takes)
    #: configurations ``udm plugins`` reports (a chain needs its parts to say what it supports)
    examples = ({"parts": [{"name": "blur", "sigma": 0.0}, {"name": "gaussian", "schedule": "cosine"}]},
                {"parts": ["mask_pixels", "gaussian"]})

    def __new__(cls, *args: Any, **kwargs: Any) -> "Chain":
        if not args and not kwargs:  # copy.copy, copy.deepcopy and unpickling rebuild an existing chain
            if cls is Chain:
                raise TypeError("Chain() missing 1 required argument: 'parts'")
            return super().__new__(cls)
        built = _build(inspect.signature(cls).bind(*args, **kwargs).arguments["parts"])
        target = LinearChain if _common_basis(built)[0] is not None else GeneralChain
        obj = super().__new__(target if cls is Chain else cls)
        obj.__dict__["_built"] = built
        return obj

    def __init__(self, parts: list[udm.PluginSpec["corruption"]], prediction: PredictionName = "x0",
                 weighting: WeightingName = "none", gamma: float = 5.0) -> None:
        self.parts: list[Any] = self.__dict__.pop("_built", None) or _build(parts)
        self.data_kind = self.parts[0].data_kind
        self.state_kind = _kind_out(self.parts[-1])
        self.data_range = getattr(self.parts[0], "data_range", None)
        if callable(getattr(self.parts[0], "fit", None)):
            self.expose("fit", self._fit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(p) for p in self.parts)})"

    def named_parts(self) -> dict[str, Any]:
        return {str(i): p for i, p in enumerate(self.parts)}

    def _fit(self, data: Any) -> None:
        """Fit the first part's statistics (the chain's prior starts from its prior)."""
        self.parts[0].fit(data)

    def _zeros(self, x: Any) -> torch.Tensor:
        n = x.shape[0] if isinstance(x, torch.Tensor) else len(x)
        return torch.zeros(n, dtype=torch.float64, device=x.device)

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> Any:
        """x_1 = F^(n)_1(... F^(2)_1(x_1^(1), eps_2) ...), x_1^(1) from the first part's prior (exact in law)."""
        x = self.parts[0].sample_prior(shape, generator, device=device, dtype=dtype)
        one = torch.ones_like(self._zeros(x))
        for part in self.parts[1:]:
            x = part.forward(x, part.sample_noise(x, generator), one)
        return x


#: the keywords of every chain class (``__new__`` takes them too; inspect, the registry and the config read these)
Chain.__signature__ = inspect.Signature(list(inspect.signature(Chain.__init__).parameters.values())[1:])


def _build(parts: Any) -> list[Any]:
    if not isinstance(parts, (list, tuple)) or len(parts) < 2:
        raise ConfigError(f"corruption chain: parts must be a list of at least two corruptions (applied in order); "
                          f"got {parts!r}. E.g. parts: [{{name: blur, sigma: 0}}, gaussian].")
    built = [udm.build_plugin("corruption", p, where=f"corruption chain: parts[{i}]") for i, p in enumerate(parts)]
    for i in range(1, len(built)):
        made, takes = _kind_out(built[i - 1]), getattr(built[i], "data_kind", "continuous")
        if made != takes:
            raise ConfigError(
                f"corruption chain: parts[{i}] must accept what parts[{i - 1}] ({built[i - 1].name!r}) produces, data "
                f"of kind {made!r}; got {built[i].name!r}, which takes data of kind {takes!r}. Reorder the parts or "
                f"chain corruptions of one data kind.")
    return built


class LinearChain(udm.LinearGaussian, Chain):
    """A chain of linear-Gaussian parts diagonal in one basis: itself linear-Gaussian (module docstring)."""

    def __init__(self, parts: list[udm.PluginSpec["corruption"]], prediction: PredictionName = "x0",
                 weighting: WeightingName = "none", gamma: float = 5.0) -> None:
        Chain.__init__(self, parts)
        udm.LinearGaussian.__init__(self, prediction, weighting, gamma)
        self.basis, _ = _common_basis(self.parts)
        wide = [p for p in self.parts if not _isotropic(p)]
        self.nominal_shape = tuple((wide or self.parts)[0].nominal_shape)
        self._scalar = not wide
        if self._scalar and all(callable(getattr(p, "schedule", None)) for p in self.parts):
            self.expose("schedule", self._schedule)
        self._check_parameterization()

    def capabilities(self) -> frozenset[str]:
        return discover_capabilities(self)

    def capability_notes(self) -> dict[str, str]:
        notes = dict(_NEVER)
        notes["schedule"] = ("the chain's amplitudes are per basis coefficient (a part is not isotropic)" if not
                             self._scalar else "a part has no affine schedule(t)")
        notes["fit"] = f"the first part ({self.parts[0].name!r}) has no statistics to fit"
        return notes

    # ------------------------------------------------------------ amplitudes
    def _parts_at(self, t: torch.Tensor, shape, derivatives: bool) -> list[tuple[torch.Tensor, ...]]:
        out = []
        n = t.shape[0]
        for p in self.parts:
            a, s = (self._shaped(v, n, shape) for v in p.amplitudes(t, shape))
            if derivatives:
                da, ds = (self._shaped(v, n, shape) for v in p.amplitude_derivatives(t, shape))
                out.append((a, s, da, ds))
            else:
                out.append((a, s))
        return out

    def _flat(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(v.shape[0]) if self._scalar else v

    def amplitudes(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """a = prod_i a_i, s = sqrt(sum_i s_i^2 prod_{j > i} a_j^2), float64 (module docstring)."""
        a, var = None, None
        for p_a, p_s in self._parts_at(t.to(torch.float64), shape, False):
            var = p_s * p_s if var is None else var * p_a * p_a + p_s * p_s
            a = p_a if a is None else a * p_a
        return self._flat(a), self._flat(var.sqrt())

    def amplitude_derivatives(self, t: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a', s') in closed form: a' by the product rule; the variance after k parts v_k = v_{k-1} a_k^2 + s_k^2 has
        v_k' = v_{k-1}' a_k^2 + 2 v_{k-1} a_k a_k' + 2 s_k s_k', s' = v' / 2s, and where s = 0 (the data end) s' is
        its one-sided limit sqrt(sum_i s_i'^2 prod_{j > i} a_j^2)."""
        a = var = da = dvar = lim = None
        for p_a, p_s, p_da, p_ds in self._parts_at(t.to(torch.float64), shape, True):
            if a is None:
                a, da, var, dvar, lim = p_a, p_da, p_s * p_s, 2 * p_s * p_ds, p_ds * p_ds
                continue
            carried = torch.where(var > 0, var * 2 * p_a * p_da, torch.zeros_like(var))  # 0, not 0 * inf, at var = 0
            dvar = dvar * p_a * p_a + carried + 2 * p_s * p_ds
            var = var * p_a * p_a + p_s * p_s
            lim = lim * p_a * p_a + p_ds * p_ds
            da = da * p_a + a * p_da
            a = a * p_a
        s = var.sqrt()
        ds = torch.where(s > 0, dvar / (2 * torch.where(s > 0, s, torch.ones_like(s))), lim.sqrt())
        return self._flat(da), self._flat(ds)

    def _schedule(self, t: torch.Tensor) -> udm.AffineSchedule:
        """alpha_t, sigma_t of a chain of isotropic parts with affine schedules, and their derivatives."""
        t = torch.as_tensor(t, dtype=torch.float64)
        flat = t.reshape(-1)
        a, s = self.amplitudes(flat, (1,))
        da, ds = self.amplitude_derivatives(flat, (1,))
        return udm.AffineSchedule(*(v.reshape(t.shape) for v in (a, s, da, ds)))

    def sample_prior(self, shape, generator, *, device=None, dtype=None) -> torch.Tensor:
        return Chain.sample_prior(self, shape, generator, device=device, dtype=dtype)

    def prior_logp(self, x1: torch.Tensor) -> torch.Tensor:
        """log p(x_1) ``(batch,)`` nats of :meth:`sample_prior`'s law. When the first part's prior is the
        linear-Gaussian default N(0, s_1(1)^2) per coefficient, pushing it through the later parts gives
        N(0, s(1)^2) with the chain's s: the default density. A first part with a prior of its own (``blur``'s
        fitted channel means) would need that prior convolved with the later parts' noise: refused."""
        first = self.parts[0]
        if type(first).prior_logp is not udm.LinearGaussian.prior_logp:
            name = getattr(first, "name", type(first).__name__)
            raise udm.CapabilityError(
                f"corruption chain: prior_logp needs a first part whose prior is N(0, s(1)^2) per coefficient; got "
                f"{name!r}, which has a prior of its own. Score the chain with a bound whose prior term does not "
                f"need it, or use the built-in corruption that fuses the parts (e.g. blur with noise).")
        return udm.LinearGaussian.prior_logp(self, x1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return Chain.state_dict(self)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        Chain.load_state_dict(self, state)


class GeneralChain(Chain):
    """A chain whose composition is not linear-Gaussian: the parts' noises, exact capabilities only (module
    docstring)."""

    def __init__(self, parts: list[udm.PluginSpec["corruption"]], prediction: PredictionName = "x0",
                 weighting: WeightingName = "none", gamma: float = 5.0) -> None:
        super().__init__(parts)
        self.family = getattr(self.parts[0], "family", "gaussian")
        if prediction != "x0" or weighting != "none":
            raise ConfigError(f"corruption chain: prediction and weighting must be 'x0' and 'none' for a chain that is "
                              f"not linear-Gaussian ({_common_basis(self.parts)[1]}); got prediction={prediction!r}, "
                              f"weighting={weighting!r}. Remove them: the network predicts x_0.")
        self._why = _common_basis(self.parts)[1]
        if all(callable(getattr(p, "refresh_noise", None)) for p in self.parts):
            self.expose("refresh_noise", self._refresh_noise)

    def capabilities(self) -> frozenset[str]:
        caps = set()
        if "refresh_noise" in self.__dict__.get("_exposed", {}):
            caps.add("refresh_noise")
        if callable(getattr(self, "fit", None)):
            caps.add("fit")
        if all("vector_space" in udm.capabilities(p) for p in self.parts):
            caps.add("vector_space")
        return frozenset(caps)

    def capability_notes(self) -> dict[str, str]:
        why = f"p(eps_1, ..., eps_n | x_t, x_0) needs the law of the intermediate states given x_t; {self._why}"
        lacking = [p.name for p in self.parts if not callable(getattr(p, "refresh_noise", None))]
        novec = [p.name for p in self.parts if "vector_space" not in udm.capabilities(p)]
        return {**_NEVER, "noise_posterior": why, "posterior": f"no closed form: {self._why}",
                "linear_gaussian": self._why, "schedule": f"no affine schedule: {self._why}",
                "refresh_noise": f"part {lacking[0]!r} has no refresh kernel" if lacking else "",
                "vector_space": f"part {novec[0]!r} is not a vector-space corruption" if novec else "",
                "fit": f"the first part ({self.parts[0].name!r}) has no statistics to fit"}

    def sample_noise(self, x0: Any, generator: torch.Generator | None) -> dict[str, Any]:
        """{"0": eps_1, ..., "n-1": eps_n}: each part's noise drawn for the state it corrupts (the intermediate
        states at t = 0, i.e. x_0 itself, or its latent after a latent corruption)."""
        eps, x, zero = {}, x0, self._zeros(x0)
        for i, part in enumerate(self.parts):
            eps[str(i)] = part.sample_noise(x, generator)
            if i < len(self.parts) - 1:
                x = part.forward(x, eps[str(i)], zero)
        return eps

    def forward(self, x0: Any, eps: dict[str, Any], t: torch.Tensor) -> Any:
        x = x0
        for i, part in enumerate(self.parts):
            x = part.forward(x, eps[str(i)], t)
        return x

    def _refresh_noise(self, eps: dict[str, Any], amount: Any, generator: torch.Generator | None) -> dict[str, Any]:
        """Each part's noise through its own q-invariant kernel (the product kernel keeps the product law)."""
        return {str(i): p.refresh_noise(eps[str(i)], amount, generator) for i, p in enumerate(self.parts)}


@udm.hookimpl
def udm_register_corruptions(register):
    register(Chain)

