"""Real data formats on small files the tests write: MNIST idx, CIFAR-10 binary batches, text folders,
and the ``quantisation`` declaration the runner checks and uses."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import udm
from udm.cli import main
from udm.errors import ConfigError
from udm.plugins.images import cifar10, mnist, read_idx
from udm.plugins.text import char_vocab, text


def _perm(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _idx(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0D: ">f4"}[type_byte]
    return bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)


def test_mnist_idx_files_plain_gzipped_and_in_a_folder(tmp_path, pixels):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(pixels))
    x = mnist(str(tmp_path / "train-images-idx3-ubyte"))
    expected = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)[:, None]
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, expected[_perm(6)])  # shuffled by seed, values k / 127.5 - 1
    folder = tmp_path / "gz"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(pixels[:2])))
    assert torch.equal(mnist(str(folder), split="test", n=2, seed=3), expected[:2][_perm(2, 3)])
    with pytest.raises(ConfigError, match=r"dataset mnist: the folder must contain one of train-images-idx3-ubyte, "):
        mnist(str(folder))  # no train file there
    floats = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    (tmp_path / "f.idx").write_bytes(_idx(floats, 0x0D))
    assert np.array_equal(read_idx(tmp_path / "f.idx"), floats)  # any idx type, big-endian


@pytest.mark.parametrize("content,message", [
    (b"\x00\x00\x08\x01" + struct.pack(">I", 6) + bytes(6), r"the idx file must hold uint8 images \(n, H, W\); got "
                                                          r"uint8 \(6,\)\. Pass the images file, not the labels file"),
    (b"PK\x03\x04zip", r"must be an idx file \(magic 0x00 0x00 <type> <ndim>\); got bytes 50 4b 03 04"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(100), r"must hold 1584 bytes for shape \(2, 28, 28\); "
                                                                      r"got 116\. The file is truncated"),
])
def test_mnist_errors(tmp_path, content, message):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ConfigError, match=r"dataset mnist: .*" + message):
        mnist(str(tmp_path / "bad"))


def _cifar_records(n: int, seed: int, label_bytes: int = 1) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    return np.concatenate([labels, images.reshape(n, -1)], 1).tobytes(), images


def test_cifar10_binary_batches(tmp_path):
    raw1, img1 = _cifar_records(3, 0)
    raw2, img2 = _cifar_records(2, 1)
    (tmp_path / "data_batch_1.bin").write_bytes(raw1)
    (tmp_path / "data_batch_2.bin").write_bytes(raw2)
    x = cifar10(str(tmp_path))
    expected = torch.from_numpy(np.concatenate([img1, img2]).astype(np.float32) / 127.5 - 1)
    assert x.shape == (5, 3, 32, 32) and torch.equal(x, expected[_perm(5)])
    # the planes are red, green, blue, each row-major: byte 1 + c * 1024 + row * 32 + col of a record
    one = cifar10(str(tmp_path / "data_batch_2.bin"), seed=0)[_perm(2).argsort()]
    assert float(one[1, 2, 5, 7]) == pytest.approx(raw2[3073 + 1 + 2 * 1024 + 5 * 32 + 7] / 127.5 - 1, abs=1e-6)
    raw100, img100 = _cifar_records(2, 2, label_bytes=2)  # CIFAR-100: coarse and fine label
    (tmp_path / "test_batch.bin").write_bytes(raw100)
    y = cifar10(str(tmp_path), split="test", label_bytes=2)
    assert torch.equal(y, torch.from_numpy(img100.astype(np.float32) / 127.5 - 1)[_perm(2)])
    with pytest.raises(ConfigError, match=r"dataset cifar10: '.*test_batch\.bin' must hold whole records of 3073 bytes "
                                          r"\(1 label \+ 3072 pixels\); got 6148 bytes\. Check label_bytes"):
        cifar10(str(tmp_path), split="test")
    with pytest.raises(ConfigError, match=r"dataset cifar10: path must be a CIFAR binary \.bin file or its folder; "
                                          r"got .*Use the binary version"):
        cifar10(str(tmp_path / "cifar-10-python"))


def test_text_folder_windows_stay_inside_one_file_with_uniform_starts(tmp_path):
    (tmp_path / "a.txt").write_text("ab" * 50, encoding="utf-8")  # 100 chars: 98 windows of 3
    (tmp_path / "b.txt").write_text("xyz" * 10, encoding="utf-8")  # 30 chars: 28 windows
    (tmp_path / "c.txt").write_text("q", encoding="utf-8")  # shorter than a window: never used, still in the vocab
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    n = 4000
    x = text(n=n, length=3, path=str(tmp_path), seed=0)
    vocab = char_vocab(str(tmp_path))
    assert vocab.chars == "abqxyz"
    words = vocab.decode(x)
    assert set(words) <= {"aba", "bab", "xyz", "yzx", "zxy"}  # never across a file boundary
    share = sum(w[0] in "xyz" for w in words) / n
    p = 28 / (98 + 28)  # every start position of every file equally likely
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"dataset text: the folder must contain \.txt files; got none in"):
        text(path=str(tmp_path / "empty"))


def test_text_single_file_draws_are_unchanged(tmp_path):
    corpus = "the quick brown fox jumps over the lazy dog"
    (tmp_path / "t.txt").write_text(corpus, encoding="utf-8")
    x = text(n=7, length=5, path=str(tmp_path / "t.txt"), seed=2)
    start = torch.randint(0, len(corpus) - 4, (7,), generator=torch.Generator().manual_seed(2))  # the one draw
    assert char_vocab(str(tmp_path / "t.txt")).decode(x) == [corpus[s:s + 5] for s in start.tolist()]


def test_quantisation_levels_values_and_check():
    q = udm.Quantisation(256)
    k = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(q.levels(q.values(k)), k) and q.levels(q.values(k)).dtype == torch.uint8
    assert torch.equal(q.levels(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))  # clamped
    assert torch.allclose(q.values(k), torch.from_numpy(np.arange(256, dtype=np.float32) / 127.5 - 1), atol=1e-6, rtol=0)
    q.check(q.values(k))
    with pytest.raises(ConfigError, match=r"data\.quantisation: the data must lie on the 256 levels of \[-1\.0, 1\.0\]; "
                                          r"got 128 of 256 values off them \(e\.g\. 0; data range \[0, 1\]\)\. "
                                          r"Check bins and range \(images in \[0, 1\] rather than \[-1, 1\]\?\)"):
        q.check(k.float() / 255)  # scaled to [0, 1]: the odd levels fall between two [-1, 1] levels
    udm.Quantisation(17).check(udm.registry().create("dataset", "digits"))  # the digits' own declaration holds
    assert udm.Quantisation(70000).levels(torch.tensor([1.0])).dtype == torch.int32
    for bad, message in (({"bins": 1}, r"bins must be an integer >= 2; got 1"),
                         ({"bins": 256, "range": [1, -1]}, r"range must be \[low, high\] with low < high; got \[1\.0, -1\.0\]"),
                         ({"levels": 256}, r"the value must be a mapping \{bins: <int>, range: \[low, high\]\}")):
        with pytest.raises(ConfigError, match=r"data\.quantisation: " + message):
            udm.Quantisation.from_config(bad)


EXPERIMENT = """\
corruption: {name: gaussian, schedule: cosine, data_range: [-1, 1]}
time: {name: continuous}
model: {name: unet, channels: 8, channel_mult: [1, 2], attention: false}
data: {name: mnist, path: images.idx}
train: {steps: 2, batch_size: 4}
sample: {sampler: ddim, steps: 2, n: 3}
run: {checkpoint_every: 0, log_every: 1}
"""


def test_the_runner_checks_records_and_applies_the_datasets_quantisation(tmp_path, pixels, capsys):
    (tmp_path / "images.idx").write_bytes(_idx(pixels))
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.replace("images.idx", str(tmp_path / "images.idx")))
    assert main(["run", str(exp), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["data"]["quantisation"] == {"bins": 256, "range": [-1.0, 1.0]}  # mnist's own declaration
    saved = load_file(str(tmp_path / "run" / "samples" / "ddim-2steps-seed0.safetensors"))
    assert saved["levels"].dtype == torch.uint8 and saved["levels"].shape == (3, 1, 28, 28)
    assert torch.equal(saved["levels"], udm.Quantisation(256).levels(saved["samples"]))
    # declared wrongly in the experiment: refused before training, with the fix
    bad = EXPERIMENT.replace("path: images.idx}", f"path: {tmp_path / 'images.idx'}, quantisation: {{bins: 16}}}}")
    exp.write_text(bad)
    assert main(["run", str(exp), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data.quantisation: the data must lie on the 16 levels of [-1.0, 1.0]; got " in err
    assert not (tmp_path / "bad" / "checkpoints" / "step-00000002").exists()
