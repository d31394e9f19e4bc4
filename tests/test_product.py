"""The ``product`` corruption (issue 14): data made of named parts, each with its own corruption and clock.

Checked with an exact oracle for labelled 2-D blobs (a Gaussian-noised point and a masked class label): it draws
(label, point) jointly from p(x_0 | x_t), so the ``invert`` sampler is exact at every step and its samples must
match the joint law (a chi-square test of a 16-cell joint histogram); holding the label at t = 0
(:meth:`Product.condition`) must give that class's points (energy distance to true draws within the noise
floor). The per-part plumbing (times, losses, the denoiser's per-part predictions) is checked on a small network.
"""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.denoiser import Prediction
from udm.errors import ConfigError
from udm.plugins.labelled import blob_law

CLASSES, STD = 4, 0.3
WEIGHTS, CENTRES, _ = blob_law(CLASSES, 2.0, STD)
#: chi-square critical value at alpha = 1e-3 with 15 degrees of freedom (16 cells)
CHI2_15 = 37.70


def _product(reg, times="independent", **kw):
    return reg.create("corruption", "product", times=times, **kw,
                      parts={"point": {"name": "gaussian", "schedule": "cosine", "prediction": "x0"},
                             "label": {"name": "mask", "vocab_size": CLASSES}})


class JointOracle:
    """Draws (label, point) from the exact p(x_0 | x_t): the label from its posterior (its observed value when
    visible), then the point from the Gaussian posterior of that class."""

    def __init__(self, product) -> None:
        self.product = product

    def predict(self, x_t, t, generator=None) -> Prediction:
        times = self.product.part_times(t)
        sch = self.product.parts["point"].schedule(times["point"])
        a, s = sch.alpha.reshape(-1, 1).double(), sch.sigma.reshape(-1, 1).double()
        p = x_t["point"].double()
        var = a * a * STD**2 + s * s  # (B, 1)
        logits = WEIGHTS.log()[None] - ((p[:, None] - a[:, None] * CENTRES[None]) ** 2).sum(-1) / (2 * var)
        label = x_t["label"][:, 0]
        visible = label < CLASSES
        logits = torch.where(visible[:, None], torch.full_like(logits, -math.inf).scatter(1, label.clamp_max(
            CLASSES - 1)[:, None], 0.0), logits)
        k = torch.multinomial(logits.softmax(1), 1, generator=generator)[:, 0]
        gain = a * STD**2 / var
        mean = CENTRES[k] + gain * (p - a * CENTRES[k])
        sd = (STD**2 * s * s / var).sqrt()
        point = mean + sd * torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        return Prediction({"point": point.to(x_t["point"].dtype), "label": k[:, None]})

    def __call__(self, x_t, t, generator=None):
        return self.predict(x_t, t, generator).x0_hat


def _joint_cells(x) -> torch.Tensor:
    """Counts ``(16,)`` of (label, x above its class centre, y above its class centre)."""
    k = x["label"][:, 0].long()
    above = (x["point"].double() > CENTRES[k]).long()
    return torch.bincount(k * 4 + above[:, 0] * 2 + above[:, 1], minlength=16).double()


def test_joint_samples_match_the_joint_histogram(reg):
    product = _product(reg)
    n = 4000
    x = udm.sample(JointOracle(product), product, reg.create("time", "continuous"), sampler="invert", steps=8,
                   shape={"point": (n, 2), "label": (n, 1)}, generator=torch.Generator().manual_seed(0))
    assert set(x) == {"point", "label"} and x["label"].dtype == torch.long and x["point"].shape == (n, 2)
    expected = n * WEIGHTS.repeat_interleave(4) / 4
    chi2 = float(((_joint_cells(x) - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_15, chi2


def _energy(a: torch.Tensor, b: torch.Tensor) -> float:
    return udm.registry().get("metric", "energy_distance")(a, b)


@pytest.mark.parametrize("k", [0, 3])
def test_holding_the_label_at_t0_gives_that_class(reg, k):
    product = _product(reg)
    n = 1000
    held = product.condition(label=torch.tensor([[k]]))
    x = udm.sample(JointOracle(held), held, reg.create("time", "continuous"), sampler="invert", steps=8,
                   shape={"point": (n, 2), "label": (n, 1)}, generator=torch.Generator().manual_seed(1 + k))
    assert bool((x["label"] == k).all())
    g = torch.Generator().manual_seed(10)
    truth = lambda: CENTRES[k].float() + STD * torch.randn(n, 2, generator=g)  # noqa: E731
    floor = torch.tensor([_energy(truth(), truth()) for _ in range(20)])
    got = _energy(x["point"], truth())
    assert got < float(floor.mean() + 4 * floor.std()), (got, floor)
    assert product.held == {} and held.held["label"].shape == (1, 1)  # conditioning copies, never mutates


def test_capabilities_are_what_every_part_offers_with_the_reasons(reg):
    product = _product(reg)
    assert udm.capabilities(product) == {"noise_posterior", "refresh_noise"}
    assert udm.supported_samplers(product, reg) == ["ddim", "invert", "naive", "refresh", "renoise"]
    notes = udm.corruption.capability_notes(product)
    assert notes["posterior"] == "part 'label' (mask) lacks it"
    assert notes["vector_space"] == "the states are mappings of parts, not one tensor"
    assert not callable(getattr(product, "posterior", None))  # not there at all, as for any corruption lacking it


def test_part_times_shared_independent_and_coupled(reg):
    time = reg.create("time", "continuous")
    g = torch.Generator().manual_seed(2)
    shared = _product(reg, "shared").train_times(time, 6, g)
    assert torch.equal(shared["point"], shared["label"])
    independent = _product(reg, "independent").train_times(time, 6, g)
    assert not torch.equal(independent["point"], independent["label"])
    coupled = _product(reg, "coupled", windows={"label": [0.5, 1.0]})
    t = torch.tensor([0.2, 0.5, 0.75, 1.0], dtype=torch.float64)
    torch.testing.assert_close(coupled.part_times(t)["label"], torch.tensor([0.0, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(coupled.part_times(t)["point"], t)
    held = _product(reg).condition(label=torch.tensor([[1]]))
    assert float(held.part_times(t)["label"].abs().max()) == 0.0


def _net(reg):
    return reg.create("model", "joint_mlp", data_shape={"point": [2], "label": [1]},
                      vocab_size={"point": None, "label": CLASSES}, width=16, depth=1)


def test_the_network_sees_every_parts_time_and_the_loss_is_the_sum_of_the_parts(reg):
    product, time, net = _product(reg), reg.create("time", "continuous"), _net(reg)
    seen = []
    wrapped = lambda x, t: seen.append(t) or net(x, t)  # noqa: E731
    data = reg.create("dataset", "labelled_blobs", n=64)
    out = udm.diffusion_loss(wrapped, product, time, data, torch.Generator().manual_seed(3))
    assert set(seen[0]) == {"point", "label"} and not torch.equal(seen[0]["point"], seen[0]["label"])
    g = torch.Generator().manual_seed(4)
    t = product.train_times(time, 64, g)
    eps = product.sample_noise(data, g)
    x_t = product.forward(data, eps, t)
    o = net(x_t, {k: time.encode(v) for k, v in t.items()})
    parts = [udm.per_sample_loss(product.parts[k], o[k], data[k], eps[k], x_t[k], t[k]) for k in ("point", "label")]
    torch.testing.assert_close(product.training_loss(o, data, eps, x_t, t), parts[0] + parts[1])
    weighted = _product(reg, weights={"label": 0.0})
    torch.testing.assert_close(weighted.training_loss(o, data, eps, x_t, t), parts[0])
    assert out.per_sample.shape == (64,)


def test_the_denoiser_reads_each_part_as_its_corruption_does(reg):
    product, time, net = _product(reg), reg.create("time", "continuous"), _net(reg)
    den = udm.Denoiser(net, product, time, temperature=0.5)
    x_t = {"point": torch.randn(5, 2), "label": torch.tensor([[0], [4], [2], [4], [1]])}
    pred = den.predict(x_t, torch.full((5,), 0.4, dtype=torch.float64), torch.Generator().manual_seed(5))
    visible = x_t["label"] < CLASSES
    assert torch.equal(pred.x0_hat["label"][visible], x_t["label"][visible])  # mask keeps what is visible
    assert pred.params["label"].shape == (5, 1, CLASSES) and pred.mean["point"] is pred.params["point"]
    assert torch.equal(pred.mean["label"], pred.x0_hat["label"])  # no mean for tokens: the last step returns the draw
    assert den._parts["label"].family.temperature == 0.5  # family options reach the parts that take them


def test_a_small_joint_network_trains_and_samples(reg):
    product, time, net = _product(reg), reg.create("time", "continuous"), _net(reg)
    data = reg.create("dataset", "labelled_blobs", n=512)
    run = udm.train(net, product, time, data, steps=60, batch_size=64, lr=3e-3, ema=0)
    assert sum(run.losses[-10:]) < sum(run.losses[:10])
    x = udm.sample(net, product.condition(label=torch.tensor([[2]])), time, sampler="ddim", steps=5,
                   shape={"point": (8, 2), "label": (8, 1)}, generator=torch.Generator().manual_seed(6))
    assert bool((x["label"] == 2).all()) and x["point"].shape == (8, 2)


def test_bad_products_are_clear_errors(reg):
    product = _product(reg)
    with pytest.raises(ConfigError, match=r"udm.train: data: corruption.parts.label must have data \(a key 'label' of "
                                          r"the data\); got data with keys point. Name the parts after the data's keys"):
        udm.train(_net(reg), product, reg.create("time", "continuous"), {"point": torch.randn(8, 2)}, steps=1)
    with pytest.raises(ConfigError, match=r"udm.train: data: every part of the data must have a corruption "
                                          r"\(corruption.parts.extra\); got none for 'extra'"):
        udm.train(_net(reg), product, reg.create("time", "continuous"),
                  {"point": torch.randn(8, 2), "label": torch.zeros(8, 1, dtype=torch.long),
                   "extra": torch.randn(8, 3)}, steps=1)
    with pytest.raises(ConfigError, match=r"udm.train: data: the data must be a mapping part -> tensor"):
        udm.train(_net(reg), product, reg.create("time", "continuous"), torch.randn(8, 2), steps=1)
    with pytest.raises(ConfigError, match=r"the data must be a tensor \(n, \.\.\.\) for corruption 'gaussian'; got a "
                                          r"mapping of parts \(point\)\. Corrupt each part with a product"):
        udm.train(reg.create("model", "mlp", data_shape=[2]), reg.create("corruption", "gaussian"),
                  reg.create("time", "continuous"), {"point": torch.randn(8, 2)}, steps=1)
    with pytest.raises(ConfigError, match=r"udm.train: data\['label'\]: the data must be integer token ids for "
                                          r"corruption 'mask'"):
        udm.train(_net(reg), product, reg.create("time", "continuous"),
                  {"point": torch.randn(8, 2), "label": torch.zeros(8, 1)}, steps=1)
    with pytest.raises(ConfigError, match=r"corruption product: shape must be a mapping part -> \(n, \.\.\.\) with "
                                          r"the parts point, label"):
        product.sample_prior((4, 2), None)
    with pytest.raises(ConfigError, match=r"corruption product: the network output must be a mapping with one output "
                                          r"per part \(point, label\); got Tensor"):
        product.training_loss(torch.zeros(3), {}, {}, {}, torch.zeros(3))
    with pytest.raises(ConfigError, match=r"corruption product: windows must only be given with times 'coupled'"):
        _product(reg, "shared", windows={"label": [0, 0.5]})
    with pytest.raises(ConfigError, match=r"corruption product: windows.label must be \[start, end\] with "
                                          r"0 <= start < end <= 1; got \[0.5, 0.5\]"):
        _product(reg, "coupled", windows={"label": [0.5, 0.5]})
    with pytest.raises(ConfigError, match=r"corruption product: windows.image: the key must be a part"):
        _product(reg, "coupled", windows={"image": [0, 1]})
    with pytest.raises(ConfigError, match=r"corruption product: weights.label must be a number >= 0"):
        _product(reg, weights={"label": -1})
    with pytest.raises(ConfigError, match=r"corruption product: condition: image must be a part \(point, label\)"):
        product.condition(image=torch.zeros(1, 2))
    with pytest.raises(ConfigError, match=r"corruption product: condition: label must have 1 or 4 rows \(the batch\); "
                                          r"got 3"):
        product.condition(label=torch.zeros(3, 1, dtype=torch.long)).sample_prior({"point": (4, 2), "label": (4, 1)},
                                                                                   None)
    with pytest.raises(ConfigError, match=r"corruption product: parts must be a mapping part -> corruption"):
        reg.create("corruption", "product", parts={})
    with pytest.raises(ConfigError, match=r"udm.sample: shape must give every part the same number of samples n"):
        udm.sample(_net(reg), product, reg.create("time", "continuous"), shape={"point": (4, 2), "label": (5, 1)})
