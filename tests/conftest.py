"""Shared fixtures: a registry of the installed plugins built with a clean environment, seeded
generators, and small helpers used by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

import udm

_ENV = ("UDM_PLUGINS", "UDM_BLOCK_PLUGINS", "UDM_DISABLE_PLUGIN_AUTOLOAD", "UDM_STRICT_PLUGINS")


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """Tests use tiny tensors: thread hand-offs cost more than the work (10-50x on a loaded CPU).
    One intra-op thread for the whole suite; set UDM_TEST_THREADS to change it."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("UDM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch):
    """No test sees plugin switches from the developer's shell."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def reg() -> udm.Registry:
    """The installed plugins (entry points in the group ``udm``), loaded once, strict."""
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV:
            mp.delenv(var, raising=False)
        return udm.load_registry(strict=True, only=None, block=(), autoload=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def make_gen():
    return gen


TINY_RUN = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 32, depth: 1, time_dim: 16}
data: {name: two_moons, n: 512}
train: {steps: 20, batch_size: 64, lr: 1e-2, ema: 0.9, warmup: 5}
sample: {sampler: ddim, steps: 5, n: 128}
eval: {sliced_wasserstein: {projections: 16}}
run: {checkpoint_every: 0, keep: 1, log_every: 5}
"""


def run_tiny(out, *overrides: str):
    """Train and sample the tiny two-moons experiment into ``out`` (about a second); returns the run directory."""
    from udm.experiment import Experiment, run_experiment
    from udm.config import apply_overrides, parse_config

    cfg = apply_overrides(parse_config(TINY_RUN), list(overrides))
    return run_experiment(Experiment.from_dict(cfg), out=out, progress=False).run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny finished run directory shared by the tests that only read it."""
    return run_tiny(tmp_path_factory.mktemp("tiny") / "run")
