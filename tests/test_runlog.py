"""``run.log``: metrics.jsonl always, TensorBoard event files on request (read back and compared)."""

from __future__ import annotations

import json
import sys

import pytest

from udm._runlog import check_log
from udm.errors import ConfigError

from conftest import run_tiny


def test_tensorboard_scalars_equal_the_jsonl_records(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (CI installs it: .ci/run)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = run_tiny(tmp_path / "run", "run.log=[jsonl, tensorboard]")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "eval/sliced_wasserstein/ddim-5steps"}
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows if "loss" in r], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in rows if "loss" in r])
    (sw,) = events.Scalars("eval/sliced_wasserstein/ddim-5steps")
    assert sw.step == 20 and sw.value == pytest.approx(rows[-1]["eval"]["sliced_wasserstein"], rel=1e-6)


@pytest.mark.parametrize("value,message", [
    (["jsonl", "wandb"], r"run\.log: the value must be a list of 'jsonl', 'tensorboard'; got \['jsonl', 'wandb'\]\. "
                         r"Write log: \[jsonl, tensorboard\]\."),
    (["tensorboard"], r"run\.log: the list must include 'jsonl' \(metrics\.jsonl is the run's record: resume, loss\.png "
                      r"and `udm report` read it\); got \['tensorboard'\]\. Write log: \[jsonl, tensorboard\]\."),
])
def test_run_log_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        check_log(value)


def test_missing_tensorboard_is_named_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"run\.log: 'tensorboard' needs the tensorboard package installed; got "
                                          r"ImportError .*pip install udm\[tensorboard\]`, or remove tensorboard"):
        run_tiny(tmp_path / "run", "run.log=[jsonl, tensorboard]")
    assert not (tmp_path / "run").exists()  # refused at validation, before the run directory was made


def test_a_resumed_tensorboard_log_drops_the_events_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (CI installs it: .ci/run)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from udm._runlog import TensorBoardLog

    first = TensorBoardLog(tmp_path)
    for step in (5, 10, 15):
        first.write({"step": step, "loss": float(step), "lr": 1e-3})
    first.close()
    again = TensorBoardLog(tmp_path)  # resumed from the checkpoint at step 10: step 15 is logged anew
    again.truncate_after(10)
    again.write({"step": 15, "loss": 99.0, "lr": 1e-3})
    again.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 5.0), (10, 10.0), (15, 99.0)]
