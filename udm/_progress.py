"""Progress bars: tqdm, drawn on a terminal only.

``enabled=None`` (the default) draws the bar when the stream is a terminal and stays silent otherwise
(logs, CI, subprocesses), so pipes never fill with carriage returns; ``False`` never draws (``--quiet``).
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int, label: str, *, enabled: bool | None = None, start: int = 0,
                 stream: IO[str] | None = None) -> tqdm:
    """``with progress_bar(steps, "train") as bar: bar.update(1); bar.set_postfix(loss=0.3, refresh=False)``.

    ``start``: the count already done (a resumed run starts its bar there)."""
    stream = stream if stream is not None else sys.stderr
    if enabled is None:
        enabled = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(total=total, initial=start, desc=label, file=stream, disable=not enabled, mininterval=0.1,
                dynamic_ncols=True, leave=True)
