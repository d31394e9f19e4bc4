"""Chains, products and latent corruptions from YAML (issue 14): ``udm run``, ``udm sample`` and ``--resume`` on
tiny experiments, the data-derived keywords filled into nested plugins, and ``udm plugins`` explaining what a
wrapper lacks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from _tiny import MASK, TINY, udm

LATENT = (MASK.replace("{name: mask, schedule: linear}", "{name: latent, encoder: {name: embedding, dim: 4}}")
          .replace("{name: discrete, steps: 100}", "{name: continuous}").replace("ddim", "ddpm"))
PRODUCT = (TINY.replace("{name: gaussian, schedule: cosine}",
                        "{name: product, parts: {point: gaussian, label: mask}, times: independent}")
           .replace("{name: mlp, width: 16, depth: 1, time_dim: 8}", "{name: joint_mlp, width: 16, depth: 1}")
           .replace("{name: two_moons, n: 128}", "{name: labelled_blobs, n: 128}"))
CHAIN = TINY.replace("{name: gaussian, schedule: cosine}", "{name: chain, parts: [mask_pixels, gaussian]}").replace(
    "ddim", "naive")


def _run(tmp_path, monkeypatch, text: str) -> tuple:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(text)
    assert udm("run", "exp.yaml") == 0
    return tmp_path / "runs" / "exp", yaml.safe_load((tmp_path / "runs" / "exp" / "config.yaml").read_text())


def test_a_latent_experiment_runs_samples_and_resumes(tmp_path, monkeypatch):
    run, cfg = _run(tmp_path, monkeypatch, LATENT)
    assert cfg["corruption"]["encoder"] == {"name": "embedding", "dim": 4, "vocab_size": 4}  # filled in from the data
    assert cfg["model"]["data_shape"] == [8, 4]  # the network sees the latents (length, dim)
    tokens = [line.split() for line in (run / "samples" / "ddpm-4steps-seed0.txt").read_text().splitlines()]
    assert len(tokens) == 32 and all(len(r) == 8 and all(v in "0123" for v in r) for r in tokens)
    assert udm("sample", str(run), "--sampler", "heun", "--steps", "3", "--n", "5") == 0
    assert len((run / "samples" / "heun-3steps-seed0.txt").read_text().splitlines()) == 5
    assert udm("run", "exp.yaml", "--resume", "--set", "train.steps=8") == 0  # nested keys compare as given


def test_a_product_experiment_runs_samples_and_resumes(tmp_path, monkeypatch):
    run, cfg = _run(tmp_path, monkeypatch, PRODUCT)
    assert cfg["corruption"]["parts"]["label"] == {"name": "mask", "vocab_size": 4}  # the label part's own vocabulary
    assert cfg["model"]["data_shape"] == {"point": [2], "label": [1]}
    assert cfg["model"]["vocab_size"] == {"point": None, "label": 4}
    saved = load_file(run / "samples" / "ddim-4steps-seed0.safetensors")
    assert saved["samples.point"].shape == (32, 2) and saved["samples.label"].dtype == torch.long
    assert int(saved["samples.label"].max()) < 4
    assert udm("sample", str(run), "--steps", "3", "--n", "6") == 0
    assert udm("run", "exp.yaml", "--resume", "--set", "train.steps=8") == 0


def test_a_chain_experiment_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(CHAIN)
    assert udm("check", "exp.yaml") == 0


def test_udm_plugins_says_why_a_wrapper_lacks_a_capability(capsys):
    assert udm("plugins") == 0
    out = capsys.readouterr().out
    assert "corruption 'chain' with {parts: [mask_pixels, gaussian]} supports samplers: naive, renoise" in out
    assert ("    lacks noise_posterior: p(eps_1, ..., eps_n | x_t, x_0) needs the law of the intermediate states "
            "given x_t; part 'mask_pixels' is not linear-Gaussian") in out
    gaussian = out.split("corruption 'gaussian' supports samplers: ")[1].splitlines()[0]
    assert "corruption 'latent' with {encoder: {name: embedding, vocab_size: 16, dim: 16}, inner: gaussian} " \
           f"supports samplers: {gaussian}\n" in out and "ddim, ddpm" in gaussian  # the inner corruption's samplers
    assert "    lacks posterior: part 'label' (mask) lacks it" in out
    assert udm("plugins", "--corruption", "{name: product, parts: {a: gaussian, b: blur}}", "--json") == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["capabilities"] == ["fit", "noise_posterior", "posterior", "refresh_noise"]  # blur fits its prior
    assert entry["lacks"]["linear_gaussian"] == "the states are mappings of parts, not one tensor"


@pytest.mark.parametrize("text, message", [
    ("{name: chain, parts: [mask_pixels, {name: gaussian, shedule: cosine}]}",
     r"--corruption: corruption\.parts\[1\]\.shedule: the key must be one of"),
    ("{name: chain, parts: [{name: mask, vocab_size: 4}, gaussian]}",
     r"corruption chain: parts\[1\] must accept what parts\[0\] \('mask'\) produces")])
def test_udm_plugins_refuses_a_bad_configuration(text, message, capsys):
    import re

    assert udm("plugins", "--corruption", text) == 2
    assert re.search(message, capsys.readouterr().err)
