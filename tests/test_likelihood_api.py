"""udm.likelihood's arguments and results, eval: {nll: ...} in an experiment and `udm eval RUN --nll`: what the
number is (bits of a probability or nats of a density) is declared, never guessed, and bad requests are errors
that name the option."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import udm
from udm.cli import main

from _tiny import TINY, experiment


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def zero(x_t, t, generator=None):
    return torch.zeros_like(x_t)


@pytest.fixture
def gaussian(reg):
    return reg.create("corruption", "gaussian", schedule="cosine"), reg.create("time", "discrete", steps=50)


def test_unsupported_estimator_names_those_the_corruption_supports(reg, gaussian):
    c, time = gaussian
    with pytest.raises(udm.CapabilityError, match=r"likelihood estimator 'elbo_masked': the corruption must be an "
                                                  r"absorbing token corruption \(mask\); got 'gaussian'\. Estimators "
                                                  r"'gaussian' supports: elbo_continuous, elbo_discrete, ode\."):
        udm.likelihood(zero, torch.zeros(4, 2), "elbo_masked", corruption=c, time_type=time)


def test_bits_per_dim_of_images_without_quantisation_is_an_error_naming_the_option(gaussian):
    c, time = gaussian
    images = torch.zeros(4, 1, 4, 4)
    for kwargs in ({}, {"units": "bits"}):
        with pytest.raises(udm.ConfigError, match=r"udm\.likelihood: bits per dimension must come with the data's "
                                                  r"quantisation; got none declared for data shaped \(4, 1, 4, 4\)\. "
                                                  r"Declare the data's levels \(data\.quantisation: .*units: nats"):
            udm.likelihood(zero, images, "elbo_discrete", corruption=c, time_type=time, steps=2, **kwargs)
    r = udm.likelihood(zero, images, "elbo_discrete", corruption=c, time_type=time, steps=2, units="nats")
    assert r.kind == "density" and r.bits_per_dim is None
    with pytest.raises(udm.ConfigError, match=r"bits per dimension must come with the data's quantisation; got none "
                                              r"declared for data shaped \(4, 2\)"):
        udm.likelihood(zero, torch.zeros(4, 2), "ode", corruption=c, time_type=time, units="bits")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"dequantisation": "uniform"}, r"udm\.likelihood: dequantisation 'uniform' must come with the data's "
                                    r"quantisation; got none declared\. Declare the data's levels"),
    ({"quantisation": udm.Quantisation(4), "dequantisation": "discretised"},
     r"udm\.likelihood: dequantisation must be one of uniform, none for estimator 'ode' \(it scores a density\); got "
     r"'discretised'"),
    ({"stepz": 3}, r"udm\.likelihood\.stepz: the key must be one of .*got 'stepz'.*Did you mean 'steps'\?"),
    ({"probes": 0}, r"udm\.likelihood\.probes: the value must be an integer >= 1; got 0"),
    ({"quantisation": udm.Quantisation(256)}, r"udm\.likelihood: data: the data must lie on the 256 levels of "
                                              r"\[-1\.0, 1\.0\]; got 8 of 8 values off them"),
])
def test_bad_requests_are_errors_naming_the_option(gaussian, kwargs, pattern):
    c, time = gaussian
    x = torch.full((4, 2), 0.3)
    with pytest.raises(udm.ConfigError, match=pattern):
        udm.likelihood(zero, x, "ode", corruption=c, time_type=time, **kwargs)


def test_bad_variance_and_missing_arguments(gaussian):
    c, time = gaussian
    x = torch.zeros(4, 2)
    with pytest.raises(udm.ConfigError, match=r"likelihood elbo_discrete: variance must be 'small', 'large', 'model' "
                                              r"or a variance source .*; got 'analytc'"):
        udm.likelihood(zero, x, "elbo_discrete", corruption=c, time_type=time, variance="analytc")
    with pytest.raises(udm.ConfigError, match=r"likelihood: variance 'model' must come with a prediction that "
                                              r"carries a variance"):
        udm.likelihood(zero, x, "elbo_discrete", corruption=c, time_type=time, steps=2, variance="model")
    with pytest.raises(udm.ConfigError, match=r"udm\.likelihood: corruption and time_type must be given with a model"):
        udm.likelihood(zero, x, "ode")
    with pytest.raises(udm.ConfigError, match=r"udm\.likelihood: data must be given with a model; got None"):
        udm.likelihood(zero, None, "ode", corruption=c, time_type=time)
    with pytest.raises(udm.ConfigError, match=r"likelihood elbo_continuous: draws must be even for antithetic t"):
        udm.likelihood(zero, x, "elbo_continuous", corruption=c, time_type=time, draws=3, t_sampling="antithetic")


def test_variance_table_source_and_a_network(reg, gaussian):
    """A network goes through udm.Denoiser (its mean); a udm.VarianceTable on the grid is a variance source: zeros
    except at the decoder's time is the 'small' variance (Sigma = 0) with a decoder of the table's variance; a zero
    decoder variance (a point mass, no density) is refused."""
    c, time = gaussian
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=8, depth=1, time_dim=8)
    x = torch.randn(16, 2, generator=g(0))
    grid = time.grid(5)
    small = udm.likelihood(net, x, "elbo_discrete", corruption=c, time_type=time, steps=5, variance="small")
    s1 = float(c.schedule(grid[-2:-1]).sigma) ** 2
    table = udm.VarianceTable(grid, torch.tensor([0.0, 0.0, 0.0, 0.0, s1, 0.0], dtype=torch.float64))
    same = udm.likelihood(net, x, "elbo_discrete", corruption=c, time_type=time, steps=5, variance=table)
    assert same.nats_per_dim == pytest.approx(small.nats_per_dim, rel=1e-9) and same.settings["variance"] == \
        "VarianceTable"
    with pytest.raises(udm.ConfigError, match=r"likelihood: the decoder's variance must be > 0 for a density of x_0; "
                                              r"got 0 at the smallest time"):
        udm.likelihood(net, x, "elbo_discrete", corruption=c, time_type=time, steps=5,
                       variance=udm.VarianceTable(grid, torch.zeros(len(grid))))


def test_elbo_discrete_agrees_with_the_sampling_chains_nelbo(reg, gaussian):
    """udm.discrete_nelbo (the optimal-variance issue's NELBO of the chain a DDPM-type sampler runs) and
    elbo_discrete compute the same bound: with one network and one variance table, independent Monte-Carlo draws
    agree within their standard errors, in total and in the prior term (the linear schedule: a(1) > 0)."""
    _, time = gaussian
    c = reg.create("corruption", "gaussian", schedule="linear")
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=8, depth=1, time_dim=8).double()  # discrete_nelbo: float64
    x = torch.randn(8000, 2, generator=g(0), dtype=torch.float64)
    grid = time.grid(6)
    table = udm.VarianceTable(grid, torch.linspace(0.9, 0.05, len(grid), dtype=torch.float64))
    ours = udm.likelihood(net, x, "elbo_discrete", corruption=c, time_type=time, steps=6, variance=table,
                          batch_size=4000, seed=1)
    theirs = udm.discrete_nelbo(udm.Denoiser(net, c, time, variance=table), c, grid, x, generator=g(2),
                                batch_size=4000)
    d = (ours.per_example - theirs.per_sample) / 2  # the same examples: only the Monte-Carlo noise remains
    mean, se = float(d.mean()), float(d.std() / math.sqrt(len(d)))
    assert abs(mean) < 3 * se and se < 0.02, (ours.nats_per_dim, theirs.nats_per_dim, se)
    assert ours.terms.prior > 1e-5 and ours.terms.prior == pytest.approx(theirs.prior, rel=1e-9)


def test_result_record_and_terms(gaussian):
    c, time = gaussian
    x = torch.randn(32, 2, generator=g(0))
    r = udm.likelihood(zero, x, "elbo_discrete", corruption=c, time_type=time, steps=4, seed=7)
    record = json.loads(json.dumps(r.to_record()))
    t = r.terms
    assert t.prior + t.diffusion + t.reconstruction + t.dequantisation == pytest.approx(r.nats_per_dim)
    assert record["estimator"] == "elbo_discrete" and record["settings"]["steps"] == 4 and record["n"] == 32
    assert record["settings"]["seed"] == 7 and record["dequantisation"] == "none" and "per_example" not in record
    assert r.nats == pytest.approx(r.nats_per_dim * 2) and "nats/dim (density)" in r.summary()
    again = udm.likelihood(zero, x, "elbo_discrete", corruption=c, time_type=time, steps=4, seed=7, batch_size=5)
    assert again.nats_per_dim == pytest.approx(r.nats_per_dim, rel=0.2)  # other batches: other draws, same law


def test_progress_bar_counts_examples(gaussian, capsys):
    c, time = gaussian
    udm.likelihood(zero, torch.zeros(10, 2), "elbo_discrete", corruption=c, time_type=time, steps=2, batch_size=4,
                   progress=True)
    err = capsys.readouterr().err
    assert "nll elbo_discrete" in err and "10/10" in err


def test_default_estimator_follows_the_time_type(reg):
    from udm.likelihoods import default_estimator

    c = reg.create("corruption", "gaussian")
    assert default_estimator(c, reg.create("time", "discrete")) == "elbo_discrete"
    assert default_estimator(c, reg.create("time", "continuous")) == "elbo_continuous"
    assert default_estimator(reg.create("corruption", "mask", vocab_size=3), reg.create("time", "discrete")) == \
        "elbo_masked"


# --------------------------------------------------------------------------------- experiments and the CLI
NLL = TINY + "eval: {nll: {n: 32, estimator: elbo_discrete, steps: 10}}\n"


def test_eval_nll_in_an_experiment_writes_eval_jsonl_and_records_the_dequantisation(tmp_path, monkeypatch):
    exp = experiment(tmp_path, monkeypatch, NLL)
    assert main(["run", str(exp), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    records = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    nll = records[-1]["nll"]
    assert records[-1]["step"] == 6 and nll["estimator"] == "elbo_discrete" and nll["n"] == 32
    assert nll["dequantisation"] == "none" and nll["settings"]["steps"] == 10
    assert nll["settings"]["data"] == "dataset 'two_moons' drawn with seed 1"
    saved = yaml.safe_load((run / "config.yaml").read_text())["eval"]["nll"]
    assert saved["estimator"] == "elbo_discrete" and saved["dequantisation"] == "none" and saved["steps"] == 10
    # udm eval on the trained run: another estimator, appended; an unsupported one and no --nll are usage errors
    assert main(["eval", str(run), "--nll", "--estimator", "ode", "--n", "8", "--set", "eval.nll.solver=euler"]) == 0
    last = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["nll"]
    assert last["estimator"] == "ode" and last["n"] == 8 and last["settings"]["solver"] == "euler"
    assert main(["eval", str(run), "--nll", "--estimator", "elbo_masked"]) == 2
    assert main(["eval", str(run)]) == 2
    assert main(["eval", str(run), "--nll", "--set", "eval.nll.units=bits"]) == 2
    assert udm.likelihood(str(run), estimator="ode", n=8, solver="euler").n == 8  # a run directory in Python


@pytest.mark.filterwarnings("ignore:fit_variance")  # 64 samples: Gamma_t > 1 near t = 1, where the bound is used
def test_eval_scores_a_runs_fitted_variance_by_name(tmp_path, monkeypatch, capsys):
    """eval.nll.variance names the run's own variance: 'analytic' is the table `udm fit-variance` fitted for the
    estimator's grid (the same number as passing that table by hand); a table for another grid, a head the run
    lacks, or a name without a run are errors naming the fix."""
    from udm.variance_store import load_fit

    exp = experiment(tmp_path, monkeypatch)
    assert main(["run", str(exp), "--quiet"]) == 0
    run = tmp_path / "runs" / "tiny"
    assert main(["fit-variance", str(run), "--steps", "10", "--samples", "64", "--quiet"]) == 0
    args = ["eval", str(run), "--nll", "--estimator", "elbo_discrete", "--n", "32", "--set", "eval.nll.steps=10"]
    assert main([*args, "--set", "eval.nll.variance=analytic"]) == 0
    got = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["nll"]
    table = load_fit(run, "analytic", "test")[0].table
    want = udm.likelihood(str(run), estimator="elbo_discrete", n=32, steps=10, variance=table)
    large = udm.likelihood(str(run), estimator="elbo_discrete", n=32, steps=10)
    assert got["settings"]["variance"] == "analytic" and got["nats_per_dim"] == pytest.approx(want.nats_per_dim)
    assert abs(want.nats_per_dim - large.nats_per_dim) > 1e-3  # the table is used, not the default 'large'
    assert udm.likelihood(str(run), estimator="elbo_discrete", n=32, steps=10, variance="analytic").nats_per_dim == \
        pytest.approx(want.nats_per_dim)
    capsys.readouterr()
    assert main([*args[:-1], "eval.nll.steps=20", "--set", "eval.nll.variance=analytic"]) == 2
    assert "eval.nll.variance: variance table 'analytic' must be fitted on the sampling grid" in capsys.readouterr().err
    assert main([*args, "--set", "eval.nll.variance=npr"]) == 2
    assert "eval.nll.variance: variance 'npr' needs a run trained with train.stage: variance_head" in \
        capsys.readouterr().err
    # a second stage trains an NPR head on the frozen mean: 'npr' scores with the head's Sigma, the default with the mean
    head = TINY.replace("train: {steps: 6,", "train: {stage: variance_head, head: npr, init: runs/tiny, steps: 4,")
    (tmp_path / "head.yaml").write_text(head)
    assert main(["run", "head.yaml", "--out", "h", "--quiet"]) == 0
    by_head = udm.likelihood("h", estimator="elbo_discrete", n=32, steps=10, variance="npr")
    plain = udm.likelihood("h", estimator="elbo_discrete", n=32, steps=10)
    assert plain.nats_per_dim == pytest.approx(large.nats_per_dim)  # the head run's mean network is the first run's
    assert abs(by_head.nats_per_dim - plain.nats_per_dim) > 1e-3 and by_head.settings["variance"] == "npr"
    c, time = udm.registry().create("corruption", "gaussian"), udm.registry().create("time", "discrete")
    with pytest.raises(udm.ConfigError, match=r"likelihood elbo_discrete: variance 'analytic' \(a run's fitted table "
                                              r"or variance head\) must come with a run directory; got a model"):
        udm.likelihood(zero, torch.zeros(4, 2), "elbo_discrete", corruption=c, time_type=time, variance="analytic")


@pytest.mark.parametrize("nll, pattern", [
    ("{estimator: elbo_discrete, stepz: 3}", r"eval\.nll\.stepz: the key must be one of .*Did you mean 'steps'\?"),
    ("{steps: 3}", r"eval\.nll\.steps: the key must be one of batch_size, dequantisation, estimator, n, seed, units"),
    ("{estimator: elbo_discret}", r"eval\.nll\.estimator: the name must be a registered estimator; got "
                                  r"'elbo_discret'.*Did you mean 'elbo_discrete'\?"),
    ("{units: bytes}", r"eval\.nll\.units: the value must be one of 'auto', 'bits', 'nats'; got 'bytes'"),
    ("3", r"eval\.nll: the value must be a mapping of the likelihood's options \(or null\); got 3"),
])
def test_eval_nll_keys_are_checked(tmp_path, monkeypatch, capsys, nll, pattern):
    exp = experiment(tmp_path, monkeypatch, TINY + f"eval: {{nll: {nll}}}\n")
    assert main(["check", str(exp)]) == 2
    assert __import__("re").search(pattern, capsys.readouterr().err)


def test_an_estimator_the_corruption_cannot_support_stops_the_run_before_training(tmp_path, monkeypatch, capsys):
    exp = experiment(tmp_path, monkeypatch, TINY + "eval: {nll: {estimator: elbo_masked}}\n")
    assert main(["run", str(exp), "--quiet"]) == 2
    assert "likelihood estimator 'elbo_masked'" in capsys.readouterr().err


def test_adaptive_solver_is_accurate_and_refuses_to_stall_or_run_out_of_steps():
    """rk45 integrates a smooth right-hand side to its tolerance; at a singularity, or out of steps, it stops
    with an error naming the cause instead of looping at rounding level or returning a partial integral."""
    from udm.likelihoods._solvers import SolverError, integrate

    y0 = (torch.zeros(1, dtype=torch.float64),)
    smooth = integrate(lambda t, y: (torch.full((1,), math.pi / 2 * math.cos(math.pi / 2 * t), dtype=torch.float64),),
                       y0, 0.0, 1.0, rtol=1e-8, atol=1e-10)
    assert abs(float(smooth.state[0]) - 1.0) < 1e-7 and smooth.evaluations == 1 + 6 * smooth.steps
    singular = lambda t, y: (torch.full((1,), 1 / (0.5 - t) ** 2, dtype=torch.float64),)  # noqa: E731
    with pytest.raises(SolverError, match=r"likelihood ode: the adaptive solver's step must stay above rounding "
                                          r"level; got .* at t = 0\.5.*Use a fixed-step solver"):
        integrate(singular, y0, 0.0, 1.0)
    with pytest.raises(SolverError, match=r"likelihood ode: the adaptive solver must reach t = 1\.0 within 3 steps"):
        integrate(lambda t, y: (torch.full((1,), math.cos(50 * t), dtype=torch.float64),), y0, 0.0, 1.0, max_steps=3)
    exact = integrate(lambda t, y: (torch.ones(1, dtype=torch.float64),), y0, 0.0, 1.0, max_steps=3)
    assert exact.steps == 3 and float(exact.state[0]) == pytest.approx(1.0)  # the third step lands on t = 1
