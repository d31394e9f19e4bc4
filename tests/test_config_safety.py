"""Configurations fail before training (issue 16, items 3 and 5): YAML that cannot hurt, and everything the
experiment needs checked by `udm check` and by `udm run` before its first step, with exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from udm.cli import main
from udm.config import parse_config
from udm.errors import ConfigError

from _tiny import MASK, TINY

TINY = TINY.replace("steps: 6,", "steps: 200,").replace("checkpoint_every: 3", "checkpoint_every: 50")
#: 9 nested aliases of 9: 9^9 = 387 million values once expanded, in 700 bytes; the chain sits in `versions`
#: (which nothing validates) and lands on a typed key, whose error message used to print it all
BOMB = "versions: {a: &a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in zip("abcdefgh", "bcdefghi")) + "}\n"


# ----------------------------------------------------------------------------------------------- item 3
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + TINY.replace("train: {steps: 200,", "train: {steps: *i,"))
    assert len(bomb.read_bytes()) < 1200
    # in a subprocess with a memory cap: before, udm check hung here and grew past 1.7 GB
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from udm.cli import main; sys.exit(main(['check', sys.argv[1]]))")
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert re.search(r"bomb\.yaml: the document must hold at most 100000 values once its aliases are expanded; got "
                     r"\d{6,}\. Remove the nested aliases", out.stderr), out.stderr


def test_aliases_within_the_bound_and_merge_keys_still_work():
    cfg = parse_config("base: &b {lr: 1e-3, steps: 5}\ntrain:\n  <<: *b\n  steps: 10\n")
    assert cfg["train"] == {"lr": 1e-3, "steps": 10}  # a merge key overridden is not a duplicate


def test_duplicate_keys_are_an_error_naming_both_lines():
    with pytest.raises(ConfigError, match=r"exp\.yaml:3:3: the key 'lr' must appear once in its mapping; got it again "
                                          r"\(first on line 2\)\. Keep one of the two\."):
        parse_config("train:\n  lr: 1e-3\n  lr: 1e-2\n", "exp.yaml")


# ----------------------------------------------------------------------------------------------- item 5
CAUGHT = [  # each passed `udm check` before, and failed only after training (or trained uphill)
    (["sample.sampler=ode"], r"sample: sampler 'ode': corruption 'mask' must offer", "mask"),
    (["sample.sampler=refresh"], r"sample: sampler 'refresh': give exactly one of eta or amount", ""),
    (["sample.sampler=refresh", "sample.eta=1.5"], r"sampler 'refresh': eta must be in \[0, 1\]; got 1\.5", ""),
    (["sample.spacing=cubic"], r"sample\.spacing: the value must be one of 'uniform', 'quadratic'", ""),
    (["sample.sampler=ode", "sample.solver=midpoint"], r"sample\.solver: the value must be one of 'euler', 'heun', 'rk4'; got 'midpoint'", ""),
    (["sample.family_options={temperature: 0.5}"], r"sample\.family_options: the keys must be options of the q_theta "
                                                   r"family 'gaussian', which takes none", ""),
    (["train.lr=.nan"], r"train\.lr: the value must be a number > 0; got nan", ""),
    (["train.weight_decay=-1"], r"train\.weight_decay: the value must be a number >= 0; got -1", ""),
    (["train.betas=[0.9, 1.5]"], r"train\.betas: the value must be a list \[a number in \[0, 1\)", ""),
    (["train.grad_clip=-1"], r"train\.grad_clip: the value must be a number > 0 or None; got -1", ""),
    (["run.device=cuda:99"], r"run\.device: the device must be available on this machine; got 'cuda:99'", ""),
    (["run.seed=-5"], r"run\.seed: the value must be an integer in \[0, 4294967295\]; got -5", ""),
    (["model.width=-4"], r"model\.width: the value must be an integer >= 1; got -4", ""),
    (["sample.steps=500"], r"sample\.steps: time discrete: grid: steps must be an integer >= 1 and at most 100", ""),
]
def _experiment(tmp_path: Path, variant: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(MASK.replace("steps: 6,", "steps: 200,") if variant == "mask" else TINY)
    return path


@pytest.mark.parametrize("overrides,message,variant", CAUGHT, ids=[o[0] for o, _, _ in CAUGHT])
def test_check_and_run_catch_it_before_any_training(tmp_path, capsys, overrides, message, variant):
    exp = _experiment(tmp_path, variant)
    args = [x for o in overrides for x in ("--set", o)]
    assert main(["check", str(exp), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert main(["run", str(exp), *args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()  # nothing written: not a single training step ran


def test_data_problems_name_the_file(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "points.npy", np.zeros((0, 2), np.float32))
    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.replace("{name: two_moons, n: 128}", "{file: points.npy}"))
    assert main(["check", str(exp)]) == 2
    assert re.search(r"exp\.yaml: data\.file '.*points\.npy': the data must be a non-empty array", capsys.readouterr().err)


def test_extreme_data_scale_is_a_clear_warning_not_an_error(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 1e6)
    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.replace("{name: two_moons, n: 128}", "{file: points.npy}"))
    assert main(["check", str(exp)]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(r"udm check: warning: .*points\.npy': the data's scale should be of order 1 \(the prior is "
                        r"unit-scale noise\); got max \|x\| = \d\.\d+e\+06, RMS \d\.\d+e\+0[56]\. Standardise it .*\n", err)


def test_capability_errors_from_configuration_exit_2(tmp_path, capsys):
    exp = _experiment(tmp_path, "mask")
    assert main(["check", str(exp), "--set", "sample.sampler=cold"]) == 2
    assert capsys.readouterr().err.startswith("udm check: error: ")


def test_the_sanity_check_changes_nothing_a_run_depends_on(tmp_path):
    """Results equal with and without the check: it restores the RNG, the network's mode and its weights."""
    import torch

    from udm import _preflight
    from udm.experiment import Experiment

    exp = Experiment.from_file(_experiment(tmp_path, ""))
    built = _preflight.build(exp, 0, torch.device("cpu"))
    before = {k: v.clone() for k, v in built.network.state_dict().items()}
    state, training = torch.get_rng_state(), built.network.training
    _preflight.sanity_check(exp, built, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state) and built.network.training == training
    assert all(torch.equal(before[k], v) for k, v in built.network.state_dict().items())
