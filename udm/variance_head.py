"""SN-DPM and NPR-DPM (Bao et al. 2022b, "Estimating the Optimal Covariance with Imperfect Mean in Diffusion
Probabilistic Models"): an x_t-dependent diagonal variance from a second head trained on a frozen mean network
(docs/math.md, "A second head: SN and NPR").

The head is a fresh copy of the mean network's last layer, fed the features that layer receives, so it reuses
the whole backbone; only the head trains (the mean's weights never change). Per basis coefficient k, with eps the
training noise and eps_hat the noise posterior at the frozen mean:

* ``sn``:  h_k -> E[eps_k^2 | x_t] - eps_hat_k^2     (loss (h - (eps^2 - eps_hat^2))^2),  Sigma_k = s^2/a^2 h
* ``npr``: h_k -> E[(eps_k - eps_hat_k)^2 | x_t]     (loss (h - (eps - eps_hat)^2)^2),    Sigma_k = s^2/a^2 h

SN-DPM's head learns E[eps^2 | x_t] and subtracts eps_hat^2 afterwards; udm's learns the difference, which
has the same minimiser but spares a head that is linear in the features from reproducing eps_hat^2, a
quadratic function of them (docs/math.md, "A second head: SN and NPR"). Sigma is at most v s^2 / (a^2 v + s^2)
(v: the data's variance per coefficient) or the average of that bound over the coefficients, whichever is larger
(:func:`head_bound`), and that bound where h comes out negative (a failed estimate, as Gamma_t > 1 for
``analytic``). A YAML run trains the head as a second stage::

    train: {stage: variance_head, head: sn, init: runs/moons, steps: 500}   # init: the first stage's run
    sample: {sampler: ddpm, steps: 10, variance: sn}
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from ._options import STAGE_KEYS
from .errors import ConfigError
from .losses import LossOutput, _take
from .variance import mmse_bound, x0_scale

__all__ = ["HeadKind", "VarianceHeadNetwork", "HeadVariance", "head_bound", "head_loss", "feature_layer",
           "wrap_for_stage", "prepare_stage", "stage_loss", "pop_stage_options", "STAGE_KEYS"]

HeadKind = Literal["sn", "npr"]
HEADS = ("sn", "npr")


class _Tap(nn.Module):
    """A layer that also keeps the input it last received (the features a second head reads)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features = x
        return self.layer(x)


def feature_layer(network: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, layer): the network's output layer, named by its ``variance_head_layer`` attribute
    (a dotted path) or else the last module with parameters of its own (e.g. the final Linear / Conv)."""
    path = getattr(network, "variance_head_layer", None)
    if path is None:
        leaves = [n for n, mod in network.named_modules()
                  if n and next(mod.parameters(recurse=False), None) is not None]
        if not leaves:
            raise ConfigError(f"variance head: the mean network must have a layer with parameters to copy; got "
                              f"{type(network).__name__} with none. Set its variance_head_layer attribute.")
        path = leaves[-1]
    parent_path, _, attr = path.rpartition(".")
    parent = network.get_submodule(parent_path) if parent_path else network
    return parent, attr, getattr(parent, attr)


class VarianceHeadNetwork(nn.Module):
    """A frozen mean network plus a second head: ``forward(x_t, time) -> (mean output, head output)``.

    Args:
        mean: the trained mean network (its weights are frozen and it stays in eval mode; its output layer is
            wrapped in place so that the head can read that layer's input, which renames the layer's state-dict
            keys ``<layer>.weight`` -> ``<layer>.layer.weight``: load first-stage weights before wrapping).
        kind: ``sn`` or ``npr`` (see the module docstring).
        data_variance: the data's variance per basis coefficient ``shape`` (the clip's bound), saved with the head.
    """

    def __init__(self, mean: nn.Module, kind: HeadKind, data_variance: torch.Tensor) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ConfigError(f"variance head: kind must be one of {', '.join(HEADS)}; got {kind!r}.")
        self.kind = kind
        parent, attr, layer = feature_layer(mean)
        tap = _Tap(layer)
        setattr(parent, attr, tap)
        self.mean = mean.requires_grad_(False).eval()
        object.__setattr__(self, "_tap", tap)  # the same module as inside ``mean``, not registered twice
        self.head = copy.deepcopy(layer).requires_grad_(True)
        for mod in self.head.modules():
            if callable(getattr(mod, "reset_parameters", None)):
                mod.reset_parameters()
        self.register_buffer("data_variance", torch.as_tensor(data_variance, dtype=torch.float32).clone())

    @property
    def mean_network(self) -> nn.Module:
        """The mean network alone (sampling without the head's variance, fitting a table)."""
        return self.mean

    def train(self, mode: bool = True) -> "VarianceHeadNetwork":
        super().train(mode)
        self.mean.eval()  # frozen: dropout and normalisation statistics as in the first stage
        return self

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mean(x, time)
        features, self._tap.features = self._tap.features, None  # no tensor left on the module (deepcopy, memory)
        h = self.head(features)
        if h.numel() != out.numel():
            raise ConfigError(f"variance head: the copied layer must give one value per output element ({out.numel()});"
                              f" got {h.numel()}. Name the output layer in the model's variance_head_layer.")
        return out, h.reshape(out.shape)


def head_bound(bound: torch.Tensor, coefficient_dims: int) -> torch.Tensor:
    """The upper clip of an x_t-dependent Sigma: each coefficient's linear-MMSE bound ``bound`` (its last
    ``coefficient_dims`` dimensions index the coefficients), but never below their average over the coefficients
    (the bound a one-per-time table is clipped to).

    The per-coefficient bound v_k s^2 / (a^2 v_k + s^2) holds for the average over x_t of Var[x_0k | x_t], not for
    its value at one x_t: a coefficient that rarely varies (v_k ~ 0, e.g. a corner pixel of the digits, always
    blank in the training set) has a bound ~ 0, yet given an x_t showing ink there Var[x_0k | x_t] is large, and a
    variance clipped to ~ 0 there makes the step's KL grow as (x_0k - mean_k)^2 / std^2 (docs/math.md, "A second
    head: SN and NPR"). Coefficients whose own bound is larger (e.g. blur's low frequencies) keep theirs."""
    if coefficient_dims == 0:
        return bound
    return bound.maximum(bound.mean(dim=tuple(range(-coefficient_dims, 0)), keepdim=True))


class HeadVariance:
    """q_theta's variance from the head's output (for :class:`udm.Denoiser`; ``uses_head``)."""

    uses_head = True

    def __init__(self, corruption: Any, kind: HeadKind, data_variance: torch.Tensor) -> None:
        self.corruption, self.kind, self.data_variance = corruption, kind, data_variance

    @classmethod
    def of(cls, network: VarianceHeadNetwork, corruption: Any) -> "HeadVariance":
        return cls(corruption, network.kind, network.data_variance)

    def from_head(self, head: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, mean: torch.Tensor,
                  marginal: Any = None) -> torch.Tensor:
        """Sigma = (s^2/a^2) h ``(batch, *shape)`` in the basis from the head output h (both heads learn a
        conditional variance of eps, see :data:`TARGETS`); ``mean`` is part of the protocol, unused here."""
        c = self.corruption
        m = marginal if marginal is not None else c.marginal(t, x_t, derivatives=False)
        h = head.to(torch.float64)
        scale = x0_scale(m).to(h.device)
        v = torch.as_tensor(self.data_variance).to(device=h.device, dtype=torch.float64)
        bound = head_bound(mmse_bound(m, v).to(h.device), v.ndim)
        sigma = torch.where(torch.isinf(scale), bound, torch.where(m.s64.to(h.device) > 0, scale, 0.0) * h)
        # a negative variance (h < 0) is a failed estimate, as Gamma_t > 1 for analytic:
        # nothing is known there, so the bound (docs/math.md, "Failed estimates")
        bound = bound.expand_as(sigma)
        return torch.where(sigma < 0, bound, sigma.minimum(bound)).to(x_t.dtype)

    def __call__(self, t: torch.Tensor, x_t: torch.Tensor) -> Any:
        raise ConfigError(f"variance {self.kind!r}: the variance must come from the network's second head; got a "
                          f"call without it. Sample with udm.Denoiser(VarianceHeadNetwork(...), corruption, time_type, "
                          f"variance=HeadVariance.of(network, corruption)).")


#: what each head regresses onto, per coefficient, from the training noise e and the frozen mean's e_hat
TARGETS = {"sn": lambda e, e_hat: e * e - e_hat * e_hat, "npr": lambda e, e_hat: (e - e_hat) ** 2}


def head_loss(kind: HeadKind):
    """The second stage's loss ``(network, corruption, time_type, x0, generator, *, shard) -> LossOutput``: the
    head's squared error to eps^2 - eps_hat^2 (``sn``) or (eps - eps_hat)^2 (``npr``) per basis coefficient
    (:data:`TARGETS`), eps_hat from the frozen mean (no gradient reaches it)."""
    if kind not in HEADS:
        raise ConfigError(f"variance head: kind must be one of {', '.join(HEADS)}; got {kind!r}.")

    def loss(network, corruption, time_type, x0, generator, *, shard=(0, 1)) -> LossOutput:
        t = time_type.sample_train(len(x0), generator, device=x0.device)
        eps = corruption.sample_noise(x0, generator)
        rank, world = shard
        if world > 1:
            idx = torch.arange(len(x0)).tensor_split(world)[rank]
            x0, eps, t = _take(x0, idx), _take(eps, idx), t[idx.to(t.device)]
        x_t = corruption.forward(x0, eps, t)
        out, h = network(x_t, time_type.encode(t))
        with torch.no_grad():
            m = corruption.marginal(t, x_t, derivatives=False)
            e_hat = corruption.to_basis(corruption.invert_noise(m, x_t, corruption.to_x0(out.detach(), x_t, t,
                                                                                         marginal=m)))
            e = corruption.to_basis(eps)
            target = TARGETS[kind](e, e_hat)
        per = ((h - target.to(h.dtype)) ** 2).flatten(1).mean(1)
        return LossOutput(per.mean(), per.detach(), t)

    return loss


# ------------------------------------------------------------------------------------- the YAML stage
def pop_stage_options(train: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the second stage's keys from a ``train`` section copy (they are not Trainer keywords)."""
    return {k: train.pop(k) for k in STAGE_KEYS if k in train}


def wrap_for_stage(train: dict[str, Any], network: nn.Module, data_shape: list[int]) -> nn.Module:
    """The network of a run's ``train`` section: a :class:`VarianceHeadNetwork` around ``network`` for
    ``stage: variance_head`` (its data variance a placeholder until a checkpoint's is loaded), else ``network``."""
    if train.get("stage", "mean") != "variance_head":
        return network
    return VarianceHeadNetwork(network, train.get("head", "sn"), torch.ones(tuple(data_shape)))


def prepare_stage(exp: Any, built: Any) -> Any:
    """For ``train.stage: variance_head``: load the first stage's newest intact checkpoint (its EMA weights) from
    ``train.init`` into the built network and wrap it with a fresh head; other runs pass through."""
    from . import checkpoint
    from ._rundir import is_run_dir
    from .variance_fit import data_variance

    train = exp.config["train"]
    if train.get("stage", "mean") != "variance_head":
        return built
    init = train.get("init")
    from pathlib import Path

    if not init or not is_run_dir(Path(init)) or not checkpoint.list_checkpoints(Path(init) / "checkpoints"):
        raise ConfigError(f"{exp.source}: train.init: the first stage's run directory must be a trained run (the mean "
                          f"network the head is trained on); got {init!r}. Train it first (udm run) and give its "
                          f"directory, e.g. train.init: runs/moons.")
    ckpt = checkpoint.newest_intact(Path(init) / "checkpoints")
    weights = ckpt.trainer["ema"] if ckpt.trainer["ema"] is not None else ckpt.trainer["network"]
    try:
        built.network.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{exp.source}: train.init: the first stage's weights must fit this experiment's model; got "
                          f"{first}. Use the first stage's model section unchanged.") from None
    v = data_variance(built.data, built.corruption)
    built.network = VarianceHeadNetwork(built.network, train.get("head", "sn"), v).to(next(
        built.network.parameters()).device)
    return built


def stage_loss(train: dict[str, Any]):
    """The loss function of a run's stage: :func:`head_loss` for ``variance_head``, else ``None`` (the default)."""
    return head_loss(train.get("head", "sn")) if train.get("stage", "mean") == "variance_head" else None
