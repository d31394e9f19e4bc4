"""Resume and checkpoints (issue 16, items 6-8): the refusal names every differing key, optimiser settings may
change, a moved project still resumes, checksums catch damaged checkpoints and sample/resume fall back to the
newest intact one, a partial metrics line is repaired."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from udm import checkpoint

from _tiny import TINY, experiment, udm

TINY = TINY.replace("run: {checkpoint_every: 3, keep: 2,", "run: {checkpoint_every: 2, keep: 5,")


@pytest.fixture
def exp(tmp_path: Path, monkeypatch) -> Path:
    return experiment(tmp_path, monkeypatch, TINY)


def weights(run: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / name))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ item 6
def test_resume_refusal_names_every_differing_key_with_old_and_new_values(exp, capsys):
    assert udm("train", str(exp), "--out", "r") == 0
    code = udm("train", str(exp), "--out", "r", "--resume", "--set", "model.width=32",
               "--set", "corruption.schedule=linear", "--set", "run.seed=3", "--set", "train.lr=0.005")
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"--resume: the experiment must match the run it resumes in everything that fixes the trained "
                     r"model \(corruption, time, model, data, train\.ema, run\.seed\); got 3 difference\(s\) from "
                     r"'r/config\.yaml': corruption\.schedule: 'cosine' -> 'linear'; model\.width: 16 -> 32; "
                     r"run\.seed: 0 -> 3\. Change them back, or start a new run\. What may change on resume: "
                     r"train\.steps, train\.batch_size, train\.lr, train\.weight_decay, train\.betas, train\.grad_clip, "
                     r"train\.warmup, train\.precision, train\.compile, sample, eval and the rest of run\.", err), err
    assert "train.lr" not in err.split("What may change")[0]  # lr is not one of the differences


def test_the_nan_advice_is_followable_optimiser_settings_change_on_resume(exp, tmp_path):
    assert udm("train", str(exp), "--out", "r", "--set", "train.steps=4") == 0
    assert udm("train", str(exp), "--out", "r", "--resume", "--set", "train.steps=6", "--set", "train.lr=0.001",
               "--set", "train.grad_clip=0.5", "--set", "train.warmup=10", "--set", "train.weight_decay=0.1") == 0
    state = json.loads((tmp_path / "r" / "checkpoints" / "step-00000006" / "state.json").read_text())
    group = state["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.001 and group["weight_decay"] == 0.1
    # the new warm-up applies from the resumed step: the rate after step k is lr * min(1, (k + 1) / warmup)
    assert group["lr"] == pytest.approx(0.001 * 7 / 10)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "loss" in r] == pytest.approx([0.01, 0.01, 0.001 * 7 / 10])
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "lr: 0.001" in saved and "grad_clip: 0.5" in saved  # the config as last run


def test_resume_without_changes_is_bit_for_bit_after_optimiser_settings_are_reapplied(exp, tmp_path):
    assert udm("train", str(exp), "--out", "full") == 0
    assert udm("train", str(exp), "--out", "part", "--set", "train.steps=2") == 0
    assert udm("train", str(exp), "--out", "part", "--resume") == 0
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert same(weights(tmp_path / "full", 6, name), weights(tmp_path / "part", 6, name)), name


def test_a_moved_project_still_resumes_and_samples(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)).numpy()
    np.save(project / "data" / "points.npy", points)
    (project / "exp.yaml").write_text(TINY.replace("{name: two_moons, n: 128}", "{file: data/points.npy}"))
    monkeypatch.chdir(project)
    assert udm("train", "exp.yaml", "--out", "runs/a", "--set", "train.steps=4") == 0
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    assert udm("train", "exp.yaml", "--out", "runs/a", "--resume", "--set", "train.steps=6") == 0
    assert checkpoint.latest_checkpoint(moved / "runs" / "a" / "checkpoints").name == "step-00000006"
    assert "file: ../../data/points.npy" in (moved / "runs" / "a" / "config.yaml").read_text()
    assert udm("sample", "runs/a", "--n", "8") == 0


def test_resume_with_different_data_is_refused(exp, tmp_path, capsys):
    assert udm("train", str(exp), "--out", "r") == 0
    assert udm("train", str(exp), "--out", "r", "--resume", "--set", "data.noise=0.2") == 2
    assert "data.noise: 0.05 -> 0.2" in capsys.readouterr().err
    np.save(tmp_path / "a.npy", np.zeros((32, 2), np.float32) + 0.5)
    exp.write_text(TINY.replace("{name: two_moons, n: 128}", "{file: a.npy}"))
    assert udm("train", str(exp), "--out", "f") == 0
    np.save(tmp_path / "a.npy", np.zeros((32, 2), np.float32) - 0.5)  # same path, other content
    assert udm("train", str(exp), "--out", "f", "--resume", "--set", "train.steps=8") == 2
    assert re.search(r"--resume: the training data must be the data the run was trained on; got different data "
                     r"\(sha256 [0-9a-f]{12}\.\.\., the checkpoint's: [0-9a-f]{12}\.\.\.\)", capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ item 7
def _flip_a_bit(path: Path, at: int = -20) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


DAMAGE = {
    "bit flip in the weights": (lambda c: _flip_a_bit(c / "model.safetensors"),
                                r"model\.safetensors must match the checksum written with it; got \d+ bytes"),
    "truncated optimizer state": (lambda c: (c / "optimizer.safetensors").write_bytes(
        (c / "optimizer.safetensors").read_bytes()[:100]), r"optimizer\.safetensors must match the checksum .* "
                                                           r"The file is truncated or damaged"),
    "missing EMA": (lambda c: (c / "ema.safetensors").unlink(),
                    r"ema\.safetensors must be present; got it missing\. The checkpoint is incomplete"),
    "bit flip in state.json": (lambda c: (c / "state.json").write_text(
        (c / "state.json").read_text().replace('"step": 6', '"step": 7')), r"state\.json must match its checksum"),
    "state.json not JSON": (lambda c: (c / "state.json").write_text('{"step": 6, '),
                            r"state\.json must be valid JSON"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_sample_falls_back_to_the_newest_intact(exp, tmp_path, capsys, damage):
    assert udm("run", str(exp), "--out", "r") == 0
    newest = tmp_path / "r" / "checkpoints" / "step-00000006"
    DAMAGE[damage][0](newest)
    capsys.readouterr()
    assert udm("sample", "r", "--n", "8", "--seed", "1") == 0
    err = capsys.readouterr().err
    assert re.search(rf"udm sample: warning: checkpoint '.*step-00000006': {DAMAGE[damage][1]}.* Falling back to the "
                     rf"previous checkpoint\.", err), err
    evals = [json.loads(line) for line in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 4  # sampled from step-00000004
    assert newest.is_dir()  # sampling changes nothing in the run directory


def test_resume_skips_a_damaged_checkpoint_moves_it_aside_and_ends_bit_for_bit(exp, tmp_path, capsys):
    assert udm("train", str(exp), "--out", "full", "--set", "train.steps=8") == 0
    assert udm("train", str(exp), "--out", "r") == 0
    _flip_a_bit(tmp_path / "r" / "checkpoints" / "step-00000006" / "rng.safetensors")
    assert udm("train", str(exp), "--out", "r", "--resume", "--set", "train.steps=8") == 0
    err = capsys.readouterr().err
    assert re.search(r"udm train: warning: checkpoint '.*step-00000006': rng\.safetensors must match the checksum.* "
                     r"It was moved to '.*corrupt-step-00000006'\. Falling back to the previous checkpoint\.", err), err
    assert (tmp_path / "r" / "checkpoints" / "corrupt-step-00000006").is_dir()
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert same(weights(tmp_path / "full", 8, name), weights(tmp_path / "r", 8, name)), name


def test_every_checkpoint_damaged_is_an_error_naming_them(exp, tmp_path, capsys):
    assert udm("train", str(exp), "--out", "r") == 0
    for c in checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints"):
        (c / "model.safetensors").unlink()
    assert udm("sample", "r") == 1
    assert re.search(r"udm sample: failed: CheckpointError: checkpoints: at least one checkpoint in '.*' must be intact; "
                     r"got 3 damaged ones\.", capsys.readouterr().err)


def test_checksums_cost_no_extra_read_and_old_checkpoints_still_load(tmp_path):
    from test_checkpoint import _run, _trainer

    t = _trainer()
    _run(t, 2)
    path = checkpoint.save_checkpoint(tmp_path, t)
    state = json.loads((path / "state.json").read_text())
    assert sorted(state["files"]) == ["corruption.safetensors", "ema.safetensors", "model.safetensors",
                                      "optimizer.safetensors", "rng.safetensors"]
    legacy = {k: v for k, v in state.items() if k not in ("files", "checksum")}  # written before checksums
    (path / "state.json").write_text(json.dumps(legacy))
    assert checkpoint.load_checkpoint(path).step == 2


# ------------------------------------------------------------------------------------------ item 8
def test_a_partial_last_metrics_line_is_repaired_on_resume_naming_the_file(exp, tmp_path, capsys):
    assert udm("train", str(exp), "--out", "r", "--set", "train.steps=4") == 0
    metrics = tmp_path / "r" / "metrics.jsonl"
    with metrics.open("a") as fh:
        fh.write('{"step": 6, "loss": 0.8, "l')  # the crash (or full disk) mid-line
    assert udm("train", str(exp), "--out", "r", "--resume", "--set", "train.steps=6") == 0
    err = capsys.readouterr().err
    assert re.search(r"udm train: warning: .*r/metrics\.jsonl: dropped the partial last line, which did not parse as "
                     r"JSON \(a crash or a full disk while writing\); the file is repaired\.", err), err
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses again
    assert [r["step"] for r in rows] == [2, 4, 6]
