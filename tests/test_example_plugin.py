"""The example third-party package examples/udm-pixelate, installed with pip (CI: ``pip install
./examples/udm-pixelate``): ``udm plugins`` lists it with its version and what it registered, and its
YAML experiment validates and runs through udm's runner."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from udm.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "examples" / "udm-pixelate" / "experiment.yaml"
REGISTERED = {"corruption": ["pixelate"], "dataset": ["bars"], "metric": ["pyramid_swd"]}


@pytest.fixture(scope="module")
def version() -> str:
    try:
        return metadata.version("udm-pixelate")
    except metadata.PackageNotFoundError:
        pytest.fail("udm-pixelate is not installed: run `pip install ./examples/udm-pixelate` (CI does) and rerun.")


def _udm(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDM_")}
    return subprocess.run([sys.executable, "-m", "udm", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_udm_plugins_lists_the_example_with_version_and_registrations(version):
    out = _udm("plugins", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (entry,) = [p for p in report["plugins"] if p["distribution"] == "udm-pixelate"]
    assert (entry["name"], entry["version"], entry["status"], entry["error"]) == ("pixelate", version, "loaded", None)
    assert entry["value"] == "udm_pixelate" and entry["registered"] == REGISTERED
    (corr,) = [c for c in report["corruptions"] if c["name"] == "pixelate"]
    # samplers derived for free from the linear-Gaussian layer Pixelate subclasses (Haar basis, its amplitudes only):
    # the posterior and DDPM per Haar coefficient, and the multistep solvers per coefficient
    assert corr["distribution"] == "udm-pixelate" and corr["loss"] == "squared error"
    assert corr["capabilities"] == ["fit", "linear_gaussian", "noise_posterior", "posterior", "refresh_noise",
                                    "vector_space"]
    assert {"ddim", "invert", "refresh", "cold", "heun", "naive", "ddpm", "posterior", "dpm++2m", "unipc",
            "adaptive"} <= set(corr["samplers"])
    assert not {"confidence", "maskgit"} & set(corr["samplers"])
    text = _udm("plugins").stdout
    assert f"udm-pixelate {version} [pixelate] loaded\n    corruption: pixelate\n    dataset: bars\n" \
           f"    metric: pyramid_swd" in text


def test_the_example_experiment_runs_and_records_the_plugin_version(version, tmp_path):
    result = run_experiment(EXPERIMENT, out=tmp_path / "run", progress=False,
                                overrides=["train.steps=20", "sample.n=64", "sample.steps=5", "data.n=256"])
    assert result.step == 20 and all(math.isfinite(v) for v in result.losses)
    assert set(result.metrics) == {"pyramid_swd", "sliced_wasserstein"}
    assert all(math.isfinite(v) and v >= 0 for v in result.metrics.values())
    assert tuple(result.samples.shape) == (64, 1, 8, 8)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["versions"]["plugins"]["corruption.pixelate"] == f"udm-pixelate {version} (entry point 'pixelate')"
    assert resolved["model"]["data_shape"] == [1, 8, 8]
