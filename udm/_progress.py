"""A tiny progress bar: ``train  40%|########            | 400/1000 loss 0.312 1234 it/s ETA 0:00:01``.

Drawn on a terminal only (``stream.isatty()``); silent otherwise (logs, CI, subprocesses), so
pipes never fill with carriage returns. No dependency.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``with Progress(total, "train") as bar: bar.update(step, loss=0.3)``; redraws at most 10 times a second."""

    def __init__(self, total: int, label: str, *, stream: IO[str] | None = None, enabled: bool | None = None,
                 width: int = 24, start: int = 0) -> None:
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)()) if enabled is None else enabled
        self.start_count, self.count = start, start
        self._t0 = self._last = time.perf_counter()
        self._info = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        """The current bar as text."""
        frac = min(self.count / self.total, 1.0)
        filled = int(frac * self.width)
        elapsed = time.perf_counter() - self._t0
        rate = (self.count - self.start_count) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        bar = "#" * filled + " " * (self.width - filled)
        return (f"{self.label} {frac:4.0%}|{bar}| {self.count}/{self.total}{self._info} "
                f"{rate:.1f} it/s ETA {_clock(eta)}")

    def update(self, count: int, **info: float) -> None:
        self.count = count
        if info:
            self._info = "".join(f" {k} {v:.4g}" for k, v in info.items())
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or count >= self.total):
            self._last = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
