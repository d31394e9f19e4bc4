"""The ``udm`` command end to end (subprocess) and its exit codes / messages (in process, fast)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from udm import checkpoint
from udm.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: no spinning threads on a busy machine
TINY = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 32, depth: 1, time_dim: 16}
data: {name: two_moons, n: 512}
train: {steps: 60, batch_size: 64, lr: 1e-2, ema: 0.9}
sample: {sampler: ddim, steps: 10, n: 256}
eval: {sliced_wasserstein: {projections: 32}}
run: {checkpoint_every: 20, keep: 2, log_every: 10}
"""


def _udm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "udm", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=ENV)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.mark.slow  # three CLI subprocesses: 10-20 s on two cores (CI runs -m slow)
def test_run_end_to_end_writes_every_artifact_then_sample_with_another_sampler(exp: Path, tmp_path: Path):
    proc = _udm("run", str(exp), "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    resolved = (run / "config.yaml").read_text()
    assert "prediction: v" in resolved and "weighting: none" in resolved  # defaults filled in
    assert "corruption.gaussian: udm" in resolved and "torch:" in resolved  # versions recorded
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [10, 20, 30, 40, 50, 60]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert [c.name for c in checkpoint.list_checkpoints(run / "checkpoints")] == ["step-00000040", "step-00000060"]
    assert {p.name for p in (run / "checkpoints" / "step-00000060").iterdir()} == {
        "model.safetensors", "ema.safetensors", "optimizer.safetensors", "corruption.safetensors",
        "rng.safetensors", "state.json"}
    assert Image.open(run / "loss.png").size == (700, 360)  # matplotlib figures at 100 dpi
    assert Image.open(run / "samples" / "ddim-10steps-seed0.png").size == (550, 550)
    assert Image.open(run / "samples" / "ddim-10steps-seed0-denoising.png").size == (1500, 420)
    x = load_file(str(run / "samples" / "ddim-10steps-seed0.safetensors"))["samples"]
    assert x.shape == (256, 2) and torch.isfinite(x).all()
    sw = rows[-1]["eval"]["sliced_wasserstein"]
    assert rows[-1]["step"] == 60 and np.isfinite(sw)

    proc = _udm("sample", "run", "--sampler", "ddpm", "--steps", "5", "--n", "100", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    y = load_file(str(run / "samples" / "ddpm-5steps-seed3.safetensors"))["samples"]
    assert y.shape == (100, 2) and torch.isfinite(y).all()
    # sampling again with the run's own settings reproduces its samples: the EMA weights were saved and reloaded
    assert _udm("sample", "run", "--n", "256", cwd=tmp_path).returncode == 0
    again = load_file(str(run / "samples" / "ddim-10steps-seed0.safetensors"))["samples"]
    assert torch.equal(again, x)
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["sampler"] for e in evals] == ["ddim", "ddpm", "ddim"]


def test_check_and_plugins(exp: Path, capsys):
    assert main(["check", str(exp)]) == 0
    assert "OK (corruption=gaussian, time=discrete, model=mlp, data=two_moons" in capsys.readouterr().out
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "two_moons" in out and "gaussian" in out and "sliced_wasserstein" in out


BAD = [
    ("model.widht", "64", r"model\.widht: the key must be one of .*width.*; got 'widht'\. Remove or rename it\. "
                          r"Did you mean 'width'\?"),
    ("train.steps", "ten", r"train\.steps: the value must be an integer >= 0; got 'ten'\. "
                           r"Write steps: <an integer >= 0>\."),
    ("model.data_shape", "3", r"model\.data_shape: the value must be a list of int; got 3\."),
    ("corruption.name", "gausian", r"corruption\.name: the name must be a registered corruption; got 'gausian'\. "
                                   r"Available: .*gaussian.*Did you mean 'gaussian'\?"),
    ("sample.sampler", "dim", r"sample\.sampler: the name must be a registered sampler; got 'dim'\. .*"
                              r"Did you mean 'ddim'\?"),
    ("sample.solver", "midpoint", r"sample\.solver: the key must be one of"),  # ddim has no solver option
    ("trian.steps", "3", r"trian: the section must be one of .*; got 'trian'\. .*Did you mean 'train'\?"),
    ("eval.sliced_wasserstien", "{}", r"eval\.sliced_wasserstien: the key must be a registered metric; .*"
                                      r"Did you mean 'sliced_wasserstein'\?"),
    ("train.batch_size", "0", r"train\.batch_size: the value must be an integer >= 1; got 0\."),
    ("data", "{file: missing.npy}", r"data\.file: the file must be an existing file; got '.*missing\.npy'\. Check "
                                    r"the path"),
]


def _replace_data(exp: Path, value: str) -> Path:
    out = exp.with_name("data.yaml")
    out.write_text(exp.read_text().replace("{name: two_moons, n: 512}", value))
    return out


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] for b in BAD])
def test_config_errors_exit_2_with_message_and_leave_the_run_untouched(exp, tmp_path, capsys, key, value, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = _snapshot(out)
    args = [str(exp), "--set", f"{key}={value}"] if key != "data" else [str(_replace_data(exp, value))]
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udm run: error: ")
    assert re.search(message, err), err
    assert _snapshot(out) == before


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corruption: {name: gaussian\ntime: {name: discrete}\n")
    assert main(["check", str(bad)]) == 2
    assert "bad.yaml:2:5: YAML syntax must be valid; got" in capsys.readouterr().err


def test_usage_errors_exit_2(exp, capsys):
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["run", str(exp), "--set", "steps=5"]) == 2
    assert "--set: override must be section.key=value; got 'steps=5'" in capsys.readouterr().err


def test_existing_run_without_resume_is_refused_untouched(exp, tmp_path, capsys):
    assert main(["train", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.steps=20"]) == 0
    before = _snapshot(tmp_path / "run")
    assert main(["train", str(exp), "--out", str(tmp_path / "run")]) == 2
    assert "run.out: the run directory must not hold checkpoints unless resuming" in capsys.readouterr().err
    # a resume whose experiment differs from the saved one is refused too
    assert main(["train", str(exp), "--out", str(tmp_path / "run"), "--resume", "--set", "model.width=16"]) == 2
    assert "--resume: the experiment must match the run it resumes" in capsys.readouterr().err
    assert _snapshot(tmp_path / "run") == before


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, capsys):
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)).numpy()
    # the trainer draws batch indices from a CPU generator seeded run.seed + 1: poison a row first drawn at step 5
    # (not one of the first two, which the sanity check before training uses) with a finite value that overflows
    # float32 inside the network (NaN in the data is refused before training)
    g = torch.Generator().manual_seed(1)
    seen = [set(torch.randint(200, (64,), generator=g).tolist()) for _ in range(5)]
    row = min(r for r in seen[4] - set().union(*seen[:4]) if r >= 2)
    data[row] = 1e30
    np.save(tmp_path / "points.npy", data)
    cfg = TINY.replace("data: {name: two_moons, n: 512}", "data: {file: points.npy}")
    (tmp_path / "nan.yaml").write_text(cfg)
    code = main(["run", str(tmp_path / "nan.yaml"), "--out", str(tmp_path / "run"), "--set", "run.checkpoint_every=2"])
    assert code == 1
    err = capsys.readouterr().err
    assert re.search(r"udm run: failed: TrainingError: train: the loss must be finite; got (nan|inf) at step 5\. .*"
                     r"The last good checkpoint is '.*step-00000004'; it is intact\. Fix the cause", err), err
    ckpt = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert ckpt.step == 4
    assert all(torch.isfinite(v).all() for v in ckpt.trainer["network"].values())
