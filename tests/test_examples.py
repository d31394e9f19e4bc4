"""Every example experiment runs end to end (a few steps) and ``udm report`` renders its run directory."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

import udm
from udm.experiment import Experiment, run_experiment
from udm.report import build_report
from udm._schema import schema_of

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "examples" / "udm-pixelate" / "experiment.yaml"]


@pytest.mark.slow  # 12 short runs: about 20 s on two cores
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name if p.stem == "experiment" else p.stem for p in EXAMPLES])
def test_every_example_runs_briefly_and_its_report_renders(path, tmp_path):
    overrides = ["train.steps=3", "train.batch_size=16", "sample.n=16", "sample.steps=3", "run.checkpoint_every=0"]
    exp = Experiment.from_file(path, overrides)
    dataset = exp.config["data"].get("name")
    if dataset and "n" in schema_of(udm.registry().get("dataset", dataset)).params:
        exp = Experiment.from_file(path, [*overrides, "data.n=256"])
    result = run_experiment(exp, out=tmp_path / "run", progress=False)
    report = build_report(result.run_dir)
    assert report.evaluations == 1 and set(result.metrics) == set(exp.config["eval"])
    for metric in exp.config["eval"]:
        assert f"<th>{metric}</th>" in report.html
    sizes = [Image.open(io.BytesIO(base64.b64decode(m))).size
             for m in re.findall(r'src="data:image/png;base64,([^"]+)"', report.html)]
    tokens = getattr(result.samples, "tokens", result.samples)
    if tokens.is_floating_point():  # the loss curve, the samples' picture, the reverse-process strip
        assert len(sizes) == report.images == 3
    else:  # the loss curve and the strip; the samples as text
        assert len(sizes) == report.images == 2 and "<p>Token samples " in report.html
    assert all(w >= 300 and h >= 200 for w, h in sizes)
