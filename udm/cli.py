"""The ``udm`` command.

::

    udm run EXP.yaml [--resume | --overwrite] [--out DIR] [--set key.path=value ...]   train, sample, evaluate
    udm train EXP.yaml [...]                                             train only
    udm sample RUN_DIR [--sampler NAME --steps N --n N --seed S --variance V]   sample a trained run
    udm fit-variance RUN_DIR [--source analytic --samples N --steps K | --dense M]  fit q_theta's variance
    udm check EXP.yaml [--set ...]                                       validate, build, and run 2 examples
    udm eval RUN_DIR --nll [--estimator NAME --n N --seed S]              the likelihood of held-out data
    udm report RUN_DIR [--out FILE]                                      one HTML page: metrics, curves, samples
    udm plugins [--json]                                                 what is installed

Without ``--out`` (and ``run.out``) a run writes ``runs/<experiment name>``, or its next free version
``runs/<name>-2``, ``-3``, ... when that is taken; ``--resume`` continues the newest version. An explicit
directory that holds a finished run is refused unless ``--resume`` (continue it) or ``--overwrite``
(replace its outputs). A folder that is not a udm run is never written into.

Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure, 130 interrupted (Ctrl-C).
Warnings udm raises (:class:`udm.errors.UdmWarning`) print as ``udm CMD: warning: ...``. Multi-process:
``torchrun --nproc_per_node=N -m udm run EXP.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from .errors import CapabilityError, ConfigError, PluginError, UdmWarning, UnknownPluginError

__all__ = ["main", "exit_code"]

USAGE_ERRORS = (ConfigError, UnknownPluginError, CapabilityError)


def exit_code(exc: BaseException) -> int:
    """The exit status for an exception: 2 configuration/usage/plugin errors, 130 Ctrl-C, 1 anything else."""
    if isinstance(exc, (*USAGE_ERRORS, PluginError)):
        return 2
    return 130 if isinstance(exc, KeyboardInterrupt) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="udm", description="Unified diffusion models: run YAML experiments.")
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{run,train,sample,fit-variance,eval,check,report,plugins}")
    for name, help_ in (("run", "train, then sample and evaluate"), ("train", "train only"),
                        ("check", "validate an experiment without running it")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="experiment YAML file")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set train.steps=100")
        if name != "check":
            mode = sp.add_mutually_exclusive_group()
            mode.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
            mode.add_argument("--overwrite", action="store_true",
                              help="replace the outputs of an earlier run in --out/run.out (deletes them)")
            sp.add_argument("--out", help="run directory (default: run.out, else runs/<config name>[-N])")
            sp.add_argument("--quiet", action="store_true", help="no progress bars")
    sp = sub.add_parser("sample", help="sample from a trained run directory")
    sp.add_argument("run_dir")
    sp.add_argument("--sampler")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--n", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--variance", help="q_theta's variance: analytic|residual (fitted by udm fit-variance), "
                                       "small|large (closed forms), sn|npr (a variance_head run)")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="sampler options, e.g. --set sample.eta=0.5")
    sp.add_argument("--quiet", action="store_true")
    _fit_variance_parser(sub)
    _eval_parser(sub)
    sp = sub.add_parser("report", help="write one HTML summary of a run (metrics, curves, samples, config)")
    sp.add_argument("run_dir")
    sp.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html)")
    sp = sub.add_parser("plugins", help="list installed plugins and what they register")
    sp.add_argument("--json", action="store_true", help="machine-readable output (udm.plugin_report)")
    return p


def _fit_variance_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("fit-variance", help="fit q_theta's optimal reverse variance on a trained run (Analytic-DPM)")
    sp.add_argument("run_dir")
    sp.add_argument("--source", default="analytic", help="analytic (default) or residual")
    sp.add_argument("--samples", type=int, default=1000, help="training examples per time (default 1000)")
    grid = sp.add_mutually_exclusive_group()
    grid.add_argument("--steps", type=int, help="fit on this sampling grid (default: the run's sample.steps)")
    grid.add_argument("--dense", type=int, metavar="M", help="fit on M uniform steps, interpolated (serves every "
                                                             "grid, and spacing 'optimal')")
    sp.add_argument("--spacing", help="the grid's spacing with --steps (default: the run's sample.spacing)")
    sp.add_argument("--per-coefficient", action="store_true", help="one variance per basis coefficient (per DCT "
                                                                   "frequency for blur) instead of one per time")
    sp.add_argument("--batch-size", type=int, default=1000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    sp.add_argument("--quiet", action="store_true")


def _fit_variance(args: argparse.Namespace, progress: bool | None) -> None:
    from .variance_store import fit_run

    fit, path = fit_run(args.run_dir, source=args.source, samples=args.samples, steps=args.steps,
                        spacing=args.spacing, dense=args.dense, per_coefficient=args.per_coefficient,
                        batch_size=args.batch_size, seed=args.seed, overrides=args.overrides, progress=progress)
    flagged = f"; Gamma_t > 1 (set to the bound) at {len(fit.flagged)} times" if fit.flagged else ""
    print(f"variance table written to {path} ({fit.source}, {len(fit.times)} times, {fit.samples} samples{flagged})")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("eval", help="evaluate a trained run: --nll, the likelihood of held-out data")
    sp.add_argument("run_dir")
    sp.add_argument("--nll", action="store_true", help="negative log-likelihood (bits/dim, or nats/dim of a density)")
    sp.add_argument("--estimator", help="elbo_discrete, elbo_continuous, ode, elbo_masked, elbo_deletion, ...")
    sp.add_argument("--n", type=int, help="held-out examples (default: eval.nll.n, 1000)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="estimator options, e.g. --set eval.nll.steps=100")
    sp.add_argument("--quiet", action="store_true")


def _eval(args: argparse.Namespace, progress: bool | None) -> None:
    from .errors import ConfigError
    from .likelihoods import eval_run

    if not args.nll:
        raise ConfigError("udm eval: --nll (what to evaluate) must be given; got no flag. Pass --nll (the likelihood of "
                          "held-out data).")
    result = eval_run(args.run_dir, estimator=args.estimator, n=args.n, seed=args.seed, overrides=args.overrides,
                      progress=progress)
    print(result.summary(), f"(appended to {args.run_dir}/eval.jsonl)")


def _plugins(as_json: bool = False) -> None:
    from ._registry import registry
    from .plugin_report import build_report

    with contextlib.redirect_stdout(sys.stderr):  # what plugins print never mixes with the report
        report = build_report(registry())
    print(report.to_json() if as_json else report.to_text())


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """udm's warnings as one ``udm CMD: warning: ...`` line each on stderr (no source line)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UdmWarning):
            print(f"udm {command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        warnings.simplefilter("always", UdmWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while torch, numpy and the plugins are imported, then raise it.

    An interrupt that lands inside those imports can be swallowed by C code (torch's numpy set-up catches
    any exception) and leave a half-imported module behind that fails later in strange ways; deferring it
    by the second or so the imports take keeps them whole, and the command still exits 130 right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _start_up() -> None:
    """Import everything a command needs and load the plugins (under :func:`_sigint_deferred`)."""
    from . import experiment, sampling  # noqa: F401 - torch, numpy, safetensors, yaml
    from ._registry import registry

    with contextlib.redirect_stdout(sys.stderr):  # what plugins print at import never mixes with our output
        registry()


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "plugins":
        _plugins(args.json)
        return
    if args.command == "report":
        from .report import write_report

        print("report written to", write_report(args.run_dir, args.out))
        return
    progress = False if getattr(args, "quiet", False) else None
    if args.command == "check":
        from .experiment import Experiment

        exp = Experiment.from_file(args.config, args.overrides)
        built = exp.check()
        named = ", ".join(f"{s}={exp.config[s].get('name', 'file')}" for s in ("corruption", "time", "model", "data"))
        print(f"{args.config}: OK ({named}, sampler={exp.config['sample']['sampler']}; data "
              f"{tuple(built.data.shape)}; a training loss and 2 sampling steps ran on 2 examples)")
        return
    if args.command == "fit-variance":
        _fit_variance(args, progress)
        return
    if args.command == "eval":
        _eval(args, progress)
        return
    if args.command == "sample":
        from .sampling import sample_run

        _, metrics = sample_run(args.run_dir, sampler=args.sampler, steps=args.steps, n=args.n, seed=args.seed,
                                overrides=args.overrides, progress=progress, variance=args.variance)
        print("samples written to", f"{args.run_dir}/samples", *(f"{k}={v:.6g}" for k, v in metrics.items()))
        return
    from .experiment import run_experiment

    result = run_experiment(args.config, out=args.out, resume=args.resume, overwrite=args.overwrite,
                            overrides=args.overrides, sample=args.command == "run", progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {result.run_dir} (step {result.step})",
              *(f"{k}={v:.6g}" for k, v in result.metrics.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``udm`` console script; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("udm: interrupted", file=sys.stderr)
        return 130
    try:
        with _warnings_as_lines(args.command):
            with _sigint_deferred():
                _start_up()
            _dispatch(args)
    except USAGE_ERRORS as exc:
        print(f"udm {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except PluginError as exc:
        print(f"udm {args.command}: plugin error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        where = f": {exc}" if run_dir is not None else ""
        again = (f" Resume with: udm {args.command} {args.config} --resume --out {run_dir}"
                 + "".join(f" --set {o}" for o in args.overrides) if run_dir is not None else "")
        print(f"udm {args.command}: interrupted{where}{again}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # runtime failure: message first, no traceback unless UDM_DEBUG
        if os.environ.get("UDM_DEBUG"):
            raise
        print(f"udm {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_code(exc)
    return 0
