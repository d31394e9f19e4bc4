"""Built-in image datasets (digits, image_folder, npy) and the frechet_pixels metric."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.plugins.image_metrics import frechet_pixels, gaussian_frechet


def _dataset(name, **kw):
    return udm.registry().create("dataset", name, **kw)


def test_digits_shape_range_and_seeded_subset():
    import sklearn.datasets as sklearn  # the optional extra udm[digits]; part of udm[test]
    x = _dataset("digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    raw = torch.from_numpy(sklearn.load_digits().images).float() / 8 - 1
    assert torch.equal(x.reshape(1797, 64).sort(0).values, raw.reshape(1797, 64).sort(0).values)  # a permutation
    a, b = _dataset("digits", n=100, seed=3), _dataset("digits", n=100, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, _dataset("digits", n=100, seed=4))


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match=r"dataset digits: scikit-learn must be installed; .*pip install udm\[digits\]"):
        _dataset("digits")


def test_npy_layouts_and_uint8_scaling(tmp_path):
    arr = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3) * 2
    np.save(tmp_path / "a.npy", arr)
    x = _dataset("npy", path=str(tmp_path / "a.npy"), channels_last=True, seed=0)
    assert x.shape == (2, 3, 4, 4)
    want = torch.from_numpy(np.moveaxis(arr, -1, 1).astype(np.float32) / 127.5 - 1)
    assert torch.equal(x.sort(0).values, want.sort(0).values)
    np.save(tmp_path / "b.npy", np.zeros((5, 6, 7), np.float32))
    assert _dataset("npy", path=str(tmp_path / "b.npy"), n=3).shape == (3, 1, 6, 7)


def test_npy_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset npy: path must be an existing .npy file; got"):
        _dataset("npy", path=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "v.npy", np.zeros((5, 6), np.float32))
    with pytest.raises(ConfigError, match=r"dataset npy: array must have shape \(n, H, W\).*; got \(5, 6\)"):
        _dataset("npy", path=str(tmp_path / "v.npy"))
    np.save(tmp_path / "i.npy", np.zeros((5, 6, 6), np.int64))
    with pytest.raises(ConfigError, match=r"dataset npy: array dtype must be uint8 or floating; got int64"):
        _dataset("npy", path=str(tmp_path / "i.npy"))
    np.save(tmp_path / "ok.npy", np.zeros((5, 6, 6), np.float32))
    with pytest.raises(ConfigError, match=r"dataset npy: n must be an integer in \[1, 5\] or None \(all\); got 9"):
        _dataset("npy", path=str(tmp_path / "ok.npy"), n=9)


def test_image_folder(tmp_path):
    from PIL import Image  # the optional extra udm[images]; part of udm[test]
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (10, 6), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = _dataset("image_folder", path=str(tmp_path), size=[4, 5], seed=0)
    assert x.shape == (2, 3, 4, 5)
    means = sorted(x.mean(dim=(2, 3)).tolist())
    assert means == [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]
    grey = _dataset("image_folder", path=str(tmp_path), size=3, grey=True)
    assert grey.shape == (2, 1, 3, 3)
    with pytest.raises(ConfigError, match=r"dataset image_folder: path must be an existing folder; got"):
        _dataset("image_folder", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"dataset image_folder: the folder must contain images"):
        _dataset("image_folder", path=str(tmp_path / "empty"))


def test_gaussian_frechet_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2; commuting diagonal covariances: sum of per-axis terms
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    assert math.isclose(gaussian_frechet(torch.tensor([1.0]).double(), one(4.0), torch.tensor([3.0]).double(),
                                         one(9.0)), 4 + 1, rel_tol=1e-12)
    d1, d2 = torch.tensor([1.0, 4.0, 0.25]).double(), torch.tensor([4.0, 1.0, 1.0]).double()
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    want = float(((d1.sqrt() - d2.sqrt()) ** 2).sum())
    got = gaussian_frechet(torch.zeros(3).double(), q @ torch.diag(d1) @ q.T, torch.zeros(3).double(),
                           q @ torch.diag(d2) @ q.T)  # a common rotation leaves it unchanged
    assert math.isclose(got, want, rel_tol=1e-10)


def test_frechet_pixels_samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 1, 2, 2, generator=g)
    b = torch.randn(4000, 1, 2, 2, generator=g)
    assert frechet_pixels(a, b) < 0.02  # same law: O(d^2 / n)
    shifted = frechet_pixels(a + 1.0, b)
    assert abs(shifted - 4.0) < 0.15  # |mu|^2 = 4 (2x2 pixels shifted by 1)
    assert udm.registry().get("metric", "frechet_pixels") is frechet_pixels
    with pytest.raises(ConfigError, match=r"metric frechet_pixels: samples and reference must have >= 2 examples"):
        frechet_pixels(a[:, :, :1], b)
