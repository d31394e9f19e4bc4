"""Run directories never lose data (issue 16, items 1, 2, 4, 9, 12): foreign folders, the experiment file,
planted links, concurrent runs, versioned default directories, --overwrite, a full disk, Ctrl-C.

Runs are in process (``udm.cli.main``) on a tiny experiment: about 0.2 s each.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udm import _rundir, checkpoint
from udm.cli import main
from udm.errors import ConfigError

from _tiny import TINY, experiment, snapshot, udm as run

@pytest.fixture
def exp(tmp_path: Path, monkeypatch) -> Path:
    return experiment(tmp_path, monkeypatch, TINY)


def steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


# ------------------------------------------------------------------------------- item 1: foreign folders
def test_out_dot_is_refused_and_the_experiment_file_survives(exp, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert run("run", str(exp), "--out", ".") == 2
    err = capsys.readouterr().err
    assert re.search(r"udm run: error: run\.out: the run directory must be empty or a udm run directory "
                     r"\(with \.udm-run\); got '\.' holding 2 other entries \(notes\.txt, tiny\.yaml\)\. "
                     r"Choose a new or empty --out", err), err
    assert snapshot(tmp_path) == before


def test_a_foreign_folder_with_run_like_files_is_never_written(exp, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("theirs: 1\n")
    (other / "loss.png").write_bytes(b"not yours")
    (other / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    before = snapshot(other)
    assert run("run", str(exp), "--set", "run.out=other") == 2
    assert "run.out: the run directory must be empty or a udm run directory" in capsys.readouterr().err
    assert snapshot(other) == before


def test_the_experiment_file_is_never_overwritten_by_its_own_run(exp, tmp_path, capsys):
    assert run("run", str(exp), "--out", "r") == 0
    own = tmp_path / "r" / "config.yaml"
    before = own.read_bytes()
    assert run("run", str(own), "--out", "r", "--resume") == 2
    assert re.search(r"run\.out: the run directory must not write over the experiment file; got 'r', where the run "
                     r"would replace '.*r/config\.yaml'\. Copy the experiment elsewhere", capsys.readouterr().err)
    assert own.read_bytes() == before


def test_a_fresh_run_never_appends_to_another_runs_metrics(exp, tmp_path, capsys):
    assert run("run", str(exp), "--out", "r") == 0
    # a run that stopped before its first checkpoint: marker and metrics, no checkpoint
    _rundir._remove(tmp_path / "r" / "checkpoints")
    before = snapshot(tmp_path / "r")
    assert run("run", str(exp), "--out", "r") == 2
    err = capsys.readouterr().err
    assert re.search(r"run\.out: the run directory must hold no earlier outputs for a fresh run; got 'r' with "
                     r"config\.yaml, eval\.jsonl, loss\.png, metrics\.jsonl, samples \(a run that stopped before its "
                     r"first checkpoint\)\. Pass --overwrite", err), err
    assert snapshot(tmp_path / "r") == before
    assert run("run", str(exp), "--out", "r", "--resume") == 2  # nothing to resume: said, not started fresh
    assert re.search(r"--resume: the run directory must hold a checkpoint to resume; got 'r' with none \(only .*"
                     r"metrics\.jsonl.*\)\. Run without --resume", capsys.readouterr().err)
    assert run("run", str(exp), "--out", "r", "--overwrite") == 0
    assert steps(tmp_path / "r") == [2, 4, 6]  # the old rows are gone, not mixed in


# ----------------------------------------------------------------- the default directory is versioned
def test_without_out_a_second_run_gets_a_new_version_and_resume_takes_the_newest(exp, tmp_path, capsys):
    exp.write_text(TINY.replace("run: {", "run: {out: null, "))
    assert run("run", str(exp)) == 0
    assert run("run", str(exp)) == 0
    assert run("run", str(exp)) == 0
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("run directory")] == \
        ["runs/tiny", "runs/tiny-2", "runs/tiny-3"]
    first = snapshot(tmp_path / "runs" / "tiny")
    assert run("run", str(exp), "--resume", "--set", "train.steps=8") == 0
    assert "run directory: runs/tiny-3 (step 8)" in capsys.readouterr().out
    assert snapshot(tmp_path / "runs" / "tiny") == first
    assert checkpoint.latest_checkpoint(tmp_path / "runs" / "tiny-3" / "checkpoints").name == "step-00000008"


def test_an_explicit_finished_run_is_refused_unless_resume_or_overwrite(exp, tmp_path, capsys):
    assert run("run", str(exp), "--out", "r") == 0
    before = snapshot(tmp_path / "r")
    assert run("run", str(exp), "--out", "r") == 2
    assert re.search(r"run\.out: the run directory must not hold checkpoints unless resuming; got 'r' with a trained "
                     r"run\. Pass --resume to continue it, --overwrite to replace it", capsys.readouterr().err)
    assert snapshot(tmp_path / "r") == before
    assert run("run", str(exp), "--out", "r", "--resume", "--overwrite") == 2  # one or the other
    assert run("run", str(exp), "--out", "r", "--overwrite", "--set", "train.steps=4") == 0
    assert [c.name for c in checkpoint.list_checkpoints(tmp_path / "r" / "checkpoints")] == \
        ["step-00000003", "step-00000004"]
    assert steps(tmp_path / "r") == [2, 4]


# ---------------------------------------------------------------------------------- item 2: the lock
def test_a_live_run_holds_its_directory_and_the_second_is_refused_naming_it(exp, tmp_path, capsys):
    assert run("run", str(exp), "--out", "r") == 0
    holder = _rundir.claim(tmp_path / "r", resume=True)  # another live process holding the run
    try:
        before = snapshot(tmp_path / "r")
        assert run("run", str(exp), "--out", "r", "--resume") == 2
        err = capsys.readouterr().err
        assert re.search(rf"run\.out: the run directory must not be in use by another run; got 'r' held by pid "
                         rf"{os.getpid()} on host {re.escape(socket.gethostname())} \(since .*\)\. Wait for it", err)
        assert snapshot(tmp_path / "r") == before
        with pytest.raises(ConfigError, match="must not be in use by another run"):
            _rundir.claim(tmp_path / "r", resume=True)
    finally:
        holder.release()
    assert run("run", str(exp), "--out", "r", "--resume") == 0  # released: usable again


def test_a_lock_left_by_a_dead_process_is_not_stale(exp, tmp_path):
    assert run("run", str(exp), "--out", "r") == 0
    dead = {"pid": 999999, "host": socket.gethostname(), "started": time.time()}
    (tmp_path / "r" / ".udm-lock").write_text(json.dumps(dead))  # its holder is gone: no flock on it
    assert run("run", str(exp), "--out", "r", "--resume", "--set", "train.steps=7") == 0
    assert (tmp_path / "r" / ".udm-lock").read_text() == ""  # released on exit


def test_two_processes_at_once(exp, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    slow = TINY.replace("steps: 6,", "steps: 100000,")
    (tmp_path / "slow.yaml").write_text(slow)
    first = subprocess.Popen([sys.executable, "-m", "udm", "train", "slow.yaml", "--out", "r", "--quiet"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        lock = tmp_path / "r" / ".udm-lock"
        while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        second = subprocess.run([sys.executable, "-m", "udm", "train", "slow.yaml", "--out", "r", "--resume"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"must not be in use by another run; got 'r' held by pid {first.pid} on host" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ------------------------------------------------------------------------------------- item 4: links
@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "loss.png", "samples", "checkpoints"])
def test_links_planted_in_a_run_directory_are_refused_and_their_targets_untouched(exp, tmp_path, capsys, name):
    assert run("run", str(exp), "--out", "r") == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not overwrite")
    target = victim / "precious.txt" if name not in ("samples", "checkpoints") else victim
    _rundir._remove(tmp_path / "r" / name)
    (tmp_path / "r" / name).symlink_to(target)
    before = snapshot(victim)
    assert run("run", str(exp), "--out", "r", "--resume", "--set", "train.steps=9") == 2
    assert re.search(rf"run\.out: '.*r/{name}' must not be a symbolic link; got a link to '.*victim.*'\. Remove the "
                     rf"link; udm does not write through links\.", capsys.readouterr().err)
    assert snapshot(victim) == before


def test_writes_replace_a_link_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    _rundir.atomic_write(link, "new")
    assert target.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"
    (tmp_path / "metrics.jsonl").symlink_to(target)
    with pytest.raises(ConfigError, match=r"metrics\.jsonl' must be a regular file, never a symbolic link; got a "
                                          r"link to '.*target\.txt'"):
        _rundir.append_line(tmp_path / "metrics.jsonl", "{}")
    assert target.read_text() == "keep"


# ------------------------------------------------------------------ item 9: a full disk, a read-only folder
def test_a_full_disk_names_the_path_and_keeps_the_last_checkpoint(exp, tmp_path, capsys, monkeypatch):
    real, calls = checkpoint._write_tensors, []

    def full(path, tensors):
        calls.append(path)
        if len(calls) > 5:  # the second checkpoint (step 6) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors)

    monkeypatch.setattr(checkpoint, "_write_tensors", full)
    assert run("run", str(exp), "--out", "r") == 1
    err = capsys.readouterr().err
    assert re.search(r"udm run: failed: TrainingError: run directory: writing '.*r/checkpoints/\.tmp-step-00000006-"
                     r"\d+/model\.safetensors' must succeed; got No space left on device \(errno 28\)\. Free disk space "
                     r"or make the directory writable, then run again with --resume; the last checkpoint "
                     r"'.*step-00000003' is intact\.", err), err
    ckpt = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path / "r" / "checkpoints"))
    assert ckpt.step == 3
    monkeypatch.setattr(checkpoint, "_write_tensors", real)
    assert run("run", str(exp), "--out", "r", "--resume") == 0  # space freed: the run completes


def test_a_read_only_directory_is_a_clear_error(exp, tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".udm-lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert run("run", str(exp), "--out", "r") == 2
    assert re.search(r"run\.out: the run directory must be writable; got 'r' \(Permission denied\)\. Choose another "
                     r"--out", capsys.readouterr().err)


def test_a_read_only_metrics_file_mid_run_keeps_the_checkpoint(exp, tmp_path, capsys, monkeypatch):
    from udm import _artifacts

    real = _rundir.append_line

    def broken(path, line):
        if json.loads(line).get("step") == 4:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real(path, line)

    monkeypatch.setattr(_artifacts, "append_line", broken)
    assert run("run", str(exp), "--out", "r") == 1
    assert re.search(r"run directory: writing '.*r/metrics\.jsonl' must succeed; got Read-only file system \(errno 30\)"
                     r".*the last checkpoint '.*step-00000003' is intact", capsys.readouterr().err)


# -------------------------------------------------------------------------------------- item 12: Ctrl-C
def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(exp, tmp_path, capsys, monkeypatch):
    from udm.training import Trainer

    real = Trainer.train_step

    def interrupted(self, x0):
        if self.step == 4:
            raise KeyboardInterrupt
        return real(self, x0)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert run("run", str(exp), "--out", "r", "--set", "train.lr=0.02") == 130
    err = capsys.readouterr().err
    m = re.fullmatch(r"udm run: interrupted: interrupted at step 4 in 'r'; the last checkpoint is step-00000003, from "
                     r"which a resumed run continues\. Resume with: (udm run \S+ --resume --out r --set train\.lr=0\.02)"
                     r"\n", err)
    assert m, err
    monkeypatch.setattr(Trainer, "train_step", real)
    assert run(*m.group(1).split()[1:]) == 0  # the printed command works
    assert steps(tmp_path / "r") == [2, 4, 6]


def test_ctrl_c_before_training_exits_130_without_a_traceback(exp, capsys, monkeypatch):
    from udm import experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment.Experiment, "from_file", interrupted)
    assert run("check", str(exp)) == 130
    assert capsys.readouterr().err == "udm check: interrupted\n"


def test_the_command_imports_nothing_heavy_before_main_catches_ctrl_c():
    # the console script runs `from udm.cli import main`: all of torch is imported later, inside main()
    code = "import sys, udm.cli; print(sorted(m for m in ('torch', 'numpy', 'yaml', 'safetensors') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


TRIP = """
import os, signal, sys


class Trip:  # Ctrl-C exactly while torch imports numpy (from its C code, which swallows any exception there)
    done = False

    def find_spec(self, name, path, target=None):
        if name == "numpy.linalg" and not Trip.done:
            Trip.done = True
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, Trip())
from udm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("when", ["inside torch's numpy import", "after 0.3 s"])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(exp, tmp_path, when):
    # the interrupt inside torch's import of numpy used to be swallowed by torch's C code, leaving numpy
    # half-imported: the run went on and failed later with AttributeError or RecursionError (exit 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["-c", TRIP] if when.startswith("inside") else ["-m", "udm"]
    proc = subprocess.Popen([sys.executable, *argv, "run", str(exp), "--out", "r"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not when.startswith("inside"):
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.startswith("udm run: interrupted"), err


def test_the_readme_quickstart_is_repeatable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    example = str(Path(__file__).resolve().parents[1] / "examples" / "gaussian_discrete.yaml")
    small = ["--set", "train.steps=2", "--set", "data.n=64", "--set", "sample.n=16", "--set", "sample.steps=2",
             "--set", "model.width=8"]
    assert main(["run", example, *small, "--quiet"]) == 0
    assert main(["run", example, *small, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "run directory: runs/gaussian_discrete (step 2)" in out and "run directory: runs/gaussian_discrete-2" in out
