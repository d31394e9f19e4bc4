"""Shared machinery of corruptions built from other corruptions: chains, products and latent corruptions
(docs/math.md, "Composed and learned corruptions"; docs/howto-compose.md).

A wrapper must offer exactly the capabilities it really has (a sampler finds a method by looking for it, so
a wrapper may not define a method it cannot honour). :class:`Composite` gives a wrapper two things:

* **members that exist only when a part offers them**: ``self.expose(name, value)`` makes ``name`` an
  attribute of this instance (served by ``__getattr__``); ``getattr(wrapper, name, None)`` is ``None``
  otherwise, exactly as for a class that never defined it. A latent corruption exposes its inner
  corruption's linear-Gaussian layer this way (:data:`linear_gaussian_layer`), so the fast paths of every
  sampler (grid tables, per-coefficient posteriors, multistep weights) run on it unchanged;
* **what it lacks, and why**: :meth:`Composite.capability_notes` maps each capability it does not offer to
  the reason, which ``udm plugins`` and capability errors show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .corruption import OPTIONAL_CAPABILITIES, Corruption

__all__ = ["Composite", "linear_gaussian_layer", "ALL_CAPABILITIES", "prefixed", "unprefixed"]

#: every capability a corruption may offer (the optional protocols and ``vector_space``)
ALL_CAPABILITIES = (*OPTIONAL_CAPABILITIES, "vector_space")


def linear_gaussian_layer() -> tuple[str, ...]:
    """The public members of :class:`udm.LinearGaussian` beyond the corruption contract (``grid_table``,
    ``marginals``, ``apply``, ``invert_noise``, ``posterior_coefficients``, ``refresh_step``, ``basis``,
    ``parameterization``, ...): read from the class, so members added to the layer later are included."""
    from .linear_gaussian import LinearGaussian

    base = set(dir(Corruption))
    return tuple(sorted(n for n in dir(LinearGaussian) if not n.startswith("_") and n not in base))


class Composite(Corruption):
    """Base of wrappers (see the module docstring). Subclasses call :meth:`expose` for members a part offers
    and return their capabilities from :meth:`capabilities` and the reasons for the others from
    :meth:`capability_notes`."""

    def expose(self, name: str, value: Any) -> None:
        """Make ``name`` an attribute of this instance (only when a part offers it)."""
        self.__dict__.setdefault("_exposed", {})[name] = value

    def __getattr__(self, name: str) -> Any:
        exposed = self.__dict__.get("_exposed")  # never recurse (copies and unpickling start without it)
        if exposed is not None and name in exposed:
            return exposed[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def capabilities(self) -> frozenset[str]:
        """What this instance offers (see :func:`udm.capabilities`)."""
        raise NotImplementedError

    def capability_notes(self) -> dict[str, str]:
        """Capability -> why this instance does not offer it."""
        return {}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules of the forward process the trainer moves to its device and optimises (their parameters
        that require gradients) with the network: the parts' own, prefixed by the part's name."""
        out: dict[str, torch.nn.Module] = {}
        for key, part in self.named_parts().items():
            own = getattr(part, "trainable_modules", None)
            if callable(own):
                out.update({f"{key}.{k}": m for k, m in own().items()})
        return out

    def named_parts(self) -> dict[str, Any]:
        """Part name -> part corruption."""
        return {}

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The parts' states, each key prefixed by the part's name."""
        out: dict[str, torch.Tensor] = {}
        for key, part in self.named_parts().items():
            out.update(prefixed(key, part.state_dict()))
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        parts = self.named_parts()
        unknown = sorted({k.split(".", 1)[0] for k in state} - set(parts))
        if unknown:
            raise ValueError(f"corruption {self.name}: state keys must start with a part's name ({', '.join(parts)}); "
                             f"got keys for {unknown}.")
        for key, part in parts.items():
            part.load_state_dict(unprefixed(key, state))


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix.key: value}``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, without it."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}
