"""The time encoding is a property of the trained run: sampling it with a time type that feeds the network
other inputs (discrete steps 500 for a model trained with 100, or continuous time) is refused."""

from __future__ import annotations

import pytest

import udm
from udm.errors import ConfigError
from udm.sampling import sample_run

from _tiny import experiment, udm as run_udm


def test_encoding_fingerprints_the_network_input(reg):
    d100, d1000 = reg.create("time", "discrete", steps=100), reg.create("time", "discrete", steps=1000)
    c1000 = reg.create("time", "continuous")
    assert d100.encoding_fingerprint() == [0.0, 0.1, 25.0, 50.0, 75.0, 100.0]
    assert d1000.encoding_fingerprint() == pytest.approx(c1000.encoding_fingerprint())  # the shared scale: t * 1000
    assert d100.encoding_fingerprint() != d1000.encoding_fingerprint()


def test_sampling_a_run_with_another_encoding_is_refused(tmp_path, monkeypatch):
    exp = experiment(tmp_path, monkeypatch)
    assert run_udm("run", str(exp)) == 0
    run = tmp_path / "runs" / "tiny"
    _, metrics = sample_run(run, overrides=["sample.n=8"], progress=False)  # the run's own time type: fine
    with pytest.raises(ConfigError, match=r"udm sample: time: the time type must feed the network what it was "
                                          r"trained with; got inputs \[0\.0, 0\.5, 125\.0, .*trained with "
                                          r"\[0\.0, 0\.1, 25\.0, .*Use the run's own time section"):
        sample_run(run, overrides=["time.steps=500", "sample.n=8"], progress=False)
    assert run_udm("sample", str(run), "--set", "time.steps=500") == 2
