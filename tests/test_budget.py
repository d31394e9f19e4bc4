"""Budgets of model calls (issue 18, item 8): each sampler declares its calls per step, ``SamplerSpec.calls``
matches the calls a run really makes, ``udm.sample(nfe=...)`` and ``sample: {nfe: ...}`` pick the steps that
fit the budget, and a run's eval record reports the calls made."""

from __future__ import annotations

import json

import pytest
import torch

import udm
from udm.testing import GaussianMixture

MIX = GaussianMixture.ring()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gauss(reg):
    corr = reg.create("corruption", "gaussian", schedule="cosine")
    return corr, reg.create("time", "discrete", steps=100), MIX.denoiser(corr)


def _calls(spec, corr, den, times, **options) -> int:
    seen: list = []
    spec(den, corr, times, torch.randn(16, 2, generator=gen(0)), generator=gen(1), callback=seen.append, **options)
    return seen[-1].nfe


@pytest.mark.parametrize("name,options,per_step", [
    ("ddim", {}, 1), ("ddpm", {}, 1), ("posterior", {}, 1), ("cold", {}, 1), ("euler", {}, 1), ("heun", {}, 2),
    ("rk4", {}, 4), ("ode", {}, 2), ("ode", {"solver": "rk4"}, 4), ("heun", {"solver": "euler"}, 1)])
def test_declared_calls_are_the_calls_a_run_makes(gauss, reg, name, options, per_step):
    """calls(N) = c (N - 1) + 1 (the last step makes one call and returns x0_hat): Heun 2N - 1, RK4 4N - 3."""
    corr, time, den = gauss
    spec = reg.get("sampler", name)
    assert spec.per_step(options) == (per_step, 1)
    for steps in (1, 3, 5):
        assert spec.calls(steps, options) == per_step * (steps - 1) + 1 == _calls(spec, corr, den, time.grid(steps),
                                                                                 **options)


def test_every_registered_sampler_declares_an_honest_count(gauss, reg):
    """Every built-in sampler a Gaussian corruption supports: declared calls == counted calls on a 4-step grid."""
    corr, time, den = gauss
    for name in udm.supported_samplers(corr, reg):
        spec = reg.get("sampler", name)
        if udm.samplers.chooses_own_steps(spec.rule):  # adaptive: its tolerances set its calls (test_adaptive.py)
            continue
        options = {"amount": 0.3} if name == "refresh" else {}
        assert spec.calls(4, options) == _calls(spec, corr, den, time.grid(4), **options), name


@pytest.mark.parametrize("name,nfe,steps", [("heun", 10, 5), ("heun", 9, 5), ("rk4", 10, 3), ("ddim", 7, 7),
                                            ("euler", 1, 1), ("rk4", 4, 1)])
def test_sample_with_a_budget_runs_the_most_steps_that_fit(gauss, reg, name, nfe, steps):
    corr, time, den = gauss
    seen: list = []
    udm.sample(den, corr, time, shape=(16, 2), sampler=name, nfe=nfe, generator=gen(0), callback=seen.append)
    assert seen[-1].steps == steps and seen[-1].nfe <= nfe
    assert reg.get("sampler", name).calls(steps + 1) > nfe  # one more step would not fit


def test_budget_errors(gauss):
    corr, time, den = gauss
    with pytest.raises(udm.ConfigError, match=r"udm\.sample: steps and nfe must not both be given .*; got steps=5, "
                                              r"nfe=9\. Give steps for a grid, or nfe for a budget of model calls\."):
        udm.sample(den, corr, time, shape=(4, 2), sampler="heun", steps=5, nfe=9)
    with pytest.raises(udm.ConfigError, match=r"sampler 'heun': nfe must be an integer >= 1 \(a budget of model calls; "
                                              r"one step costs 1\); got 0\."):
        udm.sample(den, corr, time, shape=(4, 2), sampler="heun", nfe=0)
    with pytest.raises(udm.ConfigError, match=r"udm\.sample: nfe must give a grid the time type accepts; got nfe=150, "
                                              r"i\.e\. 150 steps of 'ddim' \(1 model call\(s\) a step, 1 on the last\)\. "
                                              r"Lower nfe\. \(time discrete: grid: steps must be .* at most 100"):
        udm.sample(den, corr, time, shape=(4, 2), sampler="ddim", nfe=150)
    with pytest.raises(udm.ConfigError, match=r"sampler 'ode': option.solver: the value must be one of 'euler', 'heun', 'rk4'; got 'rk5'"):
        udm.sample(den, corr, time, shape=(4, 2), sampler="ode", nfe=5, solver="rk5")


def test_mask_invert_budget_is_an_upper_bound(reg):
    """Steps that change nothing cost no call, so a masked run may spend less than its declared budget."""
    from udm.plugins.mask import MaskCorruption
    from udm.testing import MarkovChain, MarkovOracle

    chain = MarkovChain.random(3, 4, seed=0)
    c = MaskCorruption(3, exact_count=True)
    time = reg.create("time", "discrete", steps=64)
    seen: list = []
    udm.sample(MarkovOracle(chain, c), c, time, shape=(8, 4), sampler="invert", nfe=32, generator=gen(0),
               callback=seen.append)
    assert seen[-1].steps == 32 and seen[-1].nfe == 4 and seen[-1].reused == 28


# ------------------------------------------------------------------------------------ YAML
TINY = {
    "corruption": {"name": "gaussian", "schedule": "cosine"},
    "time": {"name": "discrete", "steps": 100},
    "model": {"name": "mlp", "width": 16, "depth": 1, "time_dim": 8},
    "data": {"name": "two_moons", "n": 128},
    "train": {"steps": 2, "batch_size": 32},
    "sample": {"sampler": "heun", "nfe": 9, "n": 64},
    "run": {"checkpoint_every": 0},
}


def test_yaml_budget_sets_the_steps_and_the_eval_record_reports_the_calls(tmp_path, reg):
    exp = udm.Experiment.from_dict(TINY, reg)
    assert "steps" not in exp.config["sample"] and exp.config["sample"]["nfe"] == 9
    udm.run_experiment(exp, out=tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "eval.jsonl").read_text().splitlines()[-1])
    assert (record["sampler"], record["sample_steps"], record["nfe"]) == ("heun", 5, 9)
    assert (tmp_path / "run" / "samples" / "heun-5steps-seed0.safetensors").is_file()
    # with steps instead, the record still says how many calls they cost
    steps_cfg = {**TINY, "sample": {"sampler": "rk4", "steps": 3, "n": 64}}
    udm.run_experiment(udm.Experiment.from_dict(steps_cfg, reg), out=tmp_path / "run2", progress=False)
    record = json.loads((tmp_path / "run2" / "eval.jsonl").read_text().splitlines()[-1])
    assert (record["sample_steps"], record["nfe"]) == (3, 9)
    # `udm sample` on the run: a new budget (or steps) replaces the saved one
    from udm.sampling import sample_run

    sample_run(tmp_path / "run", nfe=5, n=16, progress=False, registry=reg)
    sample_run(tmp_path / "run", steps=2, n=16, progress=False, registry=reg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [(r["sample_steps"], r["nfe"]) for r in rows] == [(5, 9), (3, 5), (2, 3)]


def test_yaml_budget_errors(reg):
    both = {**TINY, "sample": {"sampler": "heun", "nfe": 9, "steps": 5}}
    with pytest.raises(udm.ConfigError, match=r"sample\.nfe: the key must be given without sample\.steps .*; got 9\. "
                                              r"Remove steps: 5 or nfe: 9\."):
        udm.Experiment.from_dict(both, reg)
    zero = {**TINY, "sample": {"sampler": "heun", "nfe": 0}}
    with pytest.raises(udm.ConfigError, match=r"sample\.nfe: the value must be an integer >= 1 or None; got 0\."):
        udm.Experiment.from_dict(zero, reg)
