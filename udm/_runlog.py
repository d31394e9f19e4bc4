"""Where a run's metrics go: ``run: {log: [jsonl, tensorboard]}``.

``jsonl``        ``metrics.jsonl`` in the run directory, one JSON object per line (always on: resume,
                 ``loss.png`` and ``udm report`` read it).
``tensorboard``  TensorBoard event files in ``RUN/tensorboard/`` through ``torch.utils.tensorboard``
                 (``pip install udm[tensorboard]``; view with ``tensorboard --logdir runs``): scalars
                 ``train/loss``, ``train/lr`` and ``eval/<metric>/<sampler>-<steps>steps``.

Records are the runner's: ``{"step", "loss", "lr", "seconds"}`` per logged training step and
``{"step", "sampler", "sample_steps", "seed", "eval": {metric: value}}`` per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ._artifacts import MetricsLog
from .errors import ConfigError

__all__ = ["LogName", "LOGGERS", "RunLog", "TensorBoardLog", "check_log", "open_log"]

LogName = Literal["jsonl", "tensorboard"]


class TensorBoardLog:
    """TensorBoard scalars through ``torch.utils.tensorboard.SummaryWriter`` (created at the first record,
    so that a resumed run can first say from which step on the old events are dropped)."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder, self.enabled = folder, enabled
        self._writer: Any = None
        self._purge: int | None = None

    def truncate_after(self, step: int) -> None:
        """A resumed run drops the events logged after ``step`` (TensorBoard's ``purge_step``)."""
        self._purge = step + 1

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self._purge)
        step = int(record["step"])
        if "loss" in record:
            self._writer.add_scalar("train/loss", record["loss"], step)
            if record.get("lr") is not None:
                self._writer.add_scalar("train/lr", record["lr"], step)
        for metric, value in record.get("eval", {}).items():
            self._writer.add_scalar(f"eval/{metric}/{record['sampler']}-{record['sample_steps']}steps", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


#: name -> (factory(run_dir, enabled), the module it imports, the extra that installs it)
LOGGERS: dict[str, tuple[Callable[[Path, bool], Any], str | None, str | None]] = {
    "jsonl": (lambda run_dir, on: MetricsLog(run_dir / "metrics.jsonl", on), None, None),
    "tensorboard": (lambda run_dir, on: TensorBoardLog(run_dir / "tensorboard", on), "tensorboard", "tensorboard"),
}


def check_log(names: Any, where: str = "run.log") -> None:
    """``run.log`` must name known loggers, include ``jsonl``, and the loggers' packages must be installed."""
    if not isinstance(names, (list, tuple)) or any(n not in LOGGERS for n in names):
        raise ConfigError(f"{where}: the value must be a list of {', '.join(map(repr, LOGGERS))}; got {names!r}. "
                          f"Write log: [jsonl, tensorboard].")
    if "jsonl" not in names:
        raise ConfigError(f"{where}: the list must include 'jsonl' (metrics.jsonl is the run's record: resume, "
                          f"loss.png and `udm report` read it); got {list(names)!r}. Write log: "
                          f"[{', '.join(['jsonl', *names])}].")
    for name in names:
        module, extra = LOGGERS[name][1:]
        if module is not None:
            try:
                __import__(module)
            except ImportError as exc:
                raise ConfigError(f"{where}: {name!r} needs the {module} package installed; got ImportError "
                                  f"({exc}). Install it with `pip install udm[{extra}]`, or remove {name} from "
                                  f"run.log.") from None


class RunLog:
    """Every logger ``run.log`` names, written together (only on rank 0: ``enabled``)."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def truncate_after(self, step: int) -> None:
        """A resumed run rewrites what was logged after its checkpoint's ``step``."""
        for sink in self.sinks:
            sink.truncate_after(step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_log(names: list[str] | tuple[str, ...], run_dir: Path, enabled: bool = True) -> RunLog:
    """The loggers ``names`` (checked by :func:`check_log`) writing into ``run_dir``."""
    check_log(names)
    return RunLog([LOGGERS[name][0](run_dir, enabled) for name in dict.fromkeys(names)])
