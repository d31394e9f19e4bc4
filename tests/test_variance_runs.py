"""q_theta's variance in runs: ``udm fit-variance`` writes the table into the run (safetensors + JSON, atomically,
with what it was fitted for), ``udm sample --variance`` and ``sample: {variance: ...}`` use it, ``udm run`` fits a
missing one after training, ``spacing: optimal`` samples on the DP grid of a dense table, and the SN/NPR head is a
second YAML stage that resumes like any run and never changes the mean's weights."""

from __future__ import annotations

import json
import re

import torch

from udm import checkpoint
from udm.variance_store import load_fit

from _tiny import TINY as _TINY, experiment, udm

TINY = _TINY.replace("log_every: 2}", "log_every: 2, plots: false}")  # pictures are not what these tests check


def _records(run):
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


def test_fit_variance_then_sample_with_it(tmp_path, monkeypatch, capsys):
    exp = experiment(tmp_path, monkeypatch, TINY)
    assert udm("run", str(exp), "--out", "r") == 0
    assert udm("fit-variance", "r", "--samples", "64", "--per-coefficient", "--quiet") == 0
    out = capsys.readouterr().out
    assert "variance table written to r/variance/analytic.safetensors (analytic, 4 times, 64 samples" in out
    names = sorted(p.name for p in (tmp_path / "r" / "variance").iterdir())
    assert names == ["analytic.json", "analytic.safetensors"]  # no temporary file left behind
    fit, meta = load_fit(tmp_path / "r", "analytic", "test")
    assert meta["grid"] == {"steps": 4, "spacing": "uniform"} and meta["checkpoint_step"] == 6
    assert meta["time"] == "Discrete(steps=100)" and meta["corruption"].startswith("GaussianCorruption(schedule=cosine")
    assert fit.table.values.shape == (4, 2) and fit.per_coefficient
    assert udm("sample", "r", "--variance", "analytic") == 0
    assert _records(tmp_path / "r")[-1]["variance"] == "analytic"
    assert (tmp_path / "r" / "samples" / "ddim-4steps-seed0-analytic.safetensors").is_file()
    # the closed forms need no table
    assert udm("sample", "r", "--variance", "large", "--steps", "7") == 0
    assert _records(tmp_path / "r")[-1] | {"eval": {}} == {"step": 6, "sampler": "ddim", "sample_steps": 7, "nfe": 7,
                                                            "seed": 0, "eval": {}, "variance": "large",
                                                            "grid": {"spacing": "uniform", "first_time": 1.0, "prior":
                                                                     "the corruption's prior at t = 1 (sample_prior)"}}
    # draws: last (the mean on every step, a draw on the last) is recorded and names its own samples file
    assert udm("sample", "r", "--variance", "large", "--steps", "7", "--set", "sample.draws=last") == 0
    assert _records(tmp_path / "r")[-1]["draws"] == "last"
    assert (tmp_path / "r" / "samples" / "ddim-7steps-seed0-large-draws-last.safetensors").is_file()
    # udm sample overriding the variance away gets the run's words (sample.draws, --variance), not the Python API's
    assert udm("sample", "r", "--steps", "7", "--set", "sample.draws=last", "--set", "sample.variance=null") == 2
    assert re.search(r"sample\.draws: 'last' draws x_0 from q_theta, so it must come with a variance .*got variance "
                     r"None\. Set sample\.variance \(udm sample RUN --variance NAME\)", capsys.readouterr().err)


def test_udm_run_fits_a_missing_table_and_spacing_optimal_uses_a_dense_one(tmp_path, monkeypatch):
    text = TINY.replace("sample: {sampler: ddim, steps: 4, n: 32}",
                        "sample: {sampler: ddpm, steps: 5, n: 32, variance: analytic, spacing: optimal}")
    exp = experiment(tmp_path, monkeypatch, text)
    assert udm("run", str(exp), "--out", "r") == 0
    fit, meta = load_fit(tmp_path / "r", "analytic", "test")
    assert meta["grid"] == {"dense": 100} and fit.table.interpolate and len(fit.times) == 100
    assert _records(tmp_path / "r")[-1]["sample_steps"] == 5
    # a dense table serves any grid, and udm sample reuses it (the file is not rewritten)
    before = (tmp_path / "r" / "variance" / "analytic.safetensors").read_bytes()
    assert udm("sample", "r", "--steps", "3") == 0
    assert udm("sample", "r", "--steps", "6", "--set", "sample.spacing=quadratic") == 0
    assert (tmp_path / "r" / "variance" / "analytic.safetensors").read_bytes() == before


def test_variance_head_stage_resumes_and_leaves_the_mean_alone(tmp_path, monkeypatch):
    exp = experiment(tmp_path, monkeypatch, TINY)
    assert udm("run", str(exp), "--out", "mean") == 0
    head = TINY.replace("train: {steps: 6,", "train: {stage: variance_head, head: npr, init: mean, steps: 4,") \
        .replace("sample: {sampler: ddim, steps: 4, n: 32}", "sample: {sampler: ddpm, steps: 4, n: 32, variance: npr}")
    (tmp_path / "head.yaml").write_text(head)
    assert udm("run", "head.yaml", "--out", "h") == 0
    assert udm("run", "head.yaml", "--out", "h", "--resume", "--set", "train.steps=8") == 0
    first = checkpoint.newest_intact(tmp_path / "mean" / "checkpoints").trainer["ema"]
    second = checkpoint.newest_intact(tmp_path / "h" / "checkpoints")
    assert second.step == 8
    for key, value in first.items():
        key2 = "mean." + key.replace("out.2.", "out.2.layer.")
        assert torch.equal(second.trainer["network"][key2], value), key
        assert torch.equal(second.trainer["ema"][key2], value), key
    assert {k for k in second.trainer["network"] if not k.startswith("mean.")} == {"head.weight", "head.bias",
                                                                                   "data_variance"}
    assert _records(tmp_path / "h")[-1]["variance"] == "npr"
    assert udm("sample", "h", "--variance", "small") == 0  # the mean network of a head run samples as usual
    assert udm("sample", "h", "--variance", "sn") == 2  # an npr head is not an sn head
