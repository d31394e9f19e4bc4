"""The run's pictures, drawn with matplotlib (``pip install udm[plots]``; the README's set-up installs it).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global figure state, no
GUI backend) and :func:`save` writes it as PNG:

``loss_figure``       the loss per logged step: raw points, a smoothed line, log scale when positive,
                      the learning rate on a second y axis.
``scatter_figure``    2-D samples over the held-out reference, with axes and the metrics in the title.
``image_grid_figure`` a batch of images ``(n, C, H, W)`` tiled, captioned (sampler, steps, metrics).
``denoising_figure``  the reverse process at a few grid times: x_t and x0_hat side by side, for
                      images (one strip per sample), 2-D points (the whole cloud) or tokens (ids per
                      position, one row per time).

matplotlib is imported when a picture is drawn, never at ``import udm``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["require_matplotlib", "Snapshot", "loss_figure", "scatter_figure", "image_grid_figure",
           "denoising_figure", "tile", "png_bytes", "save", "smooth"]

_DPI = 100


def require_matplotlib(where: str = "run.plots") -> None:
    """Raise a :class:`ConfigError` naming the fix when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{where}: matplotlib must be installed to draw the run's pictures; got ImportError "
                          f"({exc}). Install it with `pip install udm[plots]`, or set run.plots: false.") from None


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def png_bytes(fig: Any) -> bytes:
    """``fig`` encoded as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG at ``path`` (folders created, written atomically); returns the path."""
    from ._rundir import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, png_bytes(fig))  # a temporary file renamed into place: never written through a link
    return path


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: a debiased exponential moving average, s_k = w s_{k-1} + (1 - w) y_k
    divided by 1 - w^k (so the first points are not pulled towards 0)."""
    out, acc = np.empty(len(values)), 0.0
    for k, y in enumerate(values):
        acc = weight * acc + (1 - weight) * y
        out[k] = acc / (1 - weight ** (k + 1))
    return out


def loss_figure(rows: list[dict[str, Any]], title: str = "training loss") -> Any:
    """Loss (and learning rate) per logged step from ``metrics.jsonl`` rows ``{"step", "loss", "lr"}``.

    Raw points are drawn faintly, the smoothed curve (EMA over about 1/20 of the points, in log space
    when the axis is logarithmic) as a line; the learning rate is dashed on the right-hand axis."""
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    rows = [r for r in rows if "loss" in r and r["loss"] is not None and math.isfinite(r["loss"])]
    step = np.asarray([r["step"] for r in rows], dtype=np.float64)
    loss = np.asarray([r["loss"] for r in rows], dtype=np.float64)
    log = len(loss) > 0 and bool((loss > 0).all())
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    handles = []
    if len(loss):
        weight = 1.0 - 1.0 / max(1.0, len(loss) / 20)
        smoothed = np.exp(smooth(np.log(loss), weight)) if log else smooth(loss, weight)
        handles.append(ax.plot(step, loss, ".", ms=3, alpha=0.35, color="C0", label="loss (logged)")[0])
        handles.append(ax.plot(step, smoothed, "-", lw=2, color="C0", label="loss (smoothed)")[0])
        if log:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax.transAxes)
    lr = [(r["step"], r["lr"]) for r in rows if r.get("lr") is not None]
    if lr:
        ax2 = ax.twinx()
        ax2.set_ylabel("learning rate", color="C1")
        ax2.tick_params(axis="y", colors="C1")
        handles.append(ax2.plot(*zip(*lr), "--", lw=1.2, color="C1", label="learning rate")[0])
        ax2.set_ylim(bottom=0)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small")
    return fig


def _limits(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A shared square-ish frame: the 0.1%..99.9% quantiles of all points plus a 10% margin."""
    both = np.concatenate([a for a in arrays if len(a)]) if any(len(a) for a in arrays) else np.zeros((1, 2))
    both = both[np.isfinite(both).all(1)]
    if not len(both):
        return np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    lo, hi = np.quantile(both, [0.001, 0.999], axis=0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.1, 1e-6)
    return centre - half, centre + half


def _points(x: Any) -> np.ndarray:
    return torch.as_tensor(x).detach().double().cpu().numpy() if x is not None else np.zeros((0, 2))


def scatter_figure(points: torch.Tensor, reference: torch.Tensor | None = None, title: str = "") -> Any:
    """2-D samples ``(n, 2)`` in blue over ``reference`` ``(m, 2)`` in grey, equal axes, labelled."""
    pts, ref = _points(points), _points(reference)
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot()
    if len(ref):
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", linewidths=0, label=f"reference ({len(ref)} held out)")
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", alpha=0.7, linewidths=0, label=f"samples ({len(pts)})")
    lo, hi = _limits([pts, ref])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title(title, fontsize="medium")
    ax.legend(loc="upper right", markerscale=4, fontsize="small")
    return fig


def tile(images: torch.Tensor, value_range: tuple[float, float] | None = None, nrow: int = 8,
         pad: int = 1) -> np.ndarray:
    """Images ``(n, C, H, W)`` (C = 1 or 3) or ``(n, H, W)`` -> one RGB array ``(rows, cols, 3)`` in [0, 1],
    ``nrow`` images per row, ``pad`` white pixels between them; values mapped from ``value_range``
    (default: the batch's min and max)."""
    x = images.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    n, _, h, w = x.shape
    ncol = max(1, min(nrow, n))
    nrows = -(-n // ncol)
    out = np.ones((nrows * (h + pad) + pad, ncol * (w + pad) + pad, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top:top + h, left:left + w] = x[i].permute(1, 2, 0).numpy()
    return out


def image_grid_figure(images: torch.Tensor, value_range: tuple[float, float] | None = None, title: str = "",
                      nrow: int = 8) -> Any:
    """A captioned grid of images (nearest-neighbour: 8x8 digits stay crisp at any size)."""
    grid = tile(images, value_range, nrow)
    scale = 6.0 / max(grid.shape[:2])
    fig = _figure(max(grid.shape[1] * scale, 3.0), grid.shape[0] * scale + 0.5)
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize="medium")
    return fig


@dataclass
class Snapshot:
    """The reverse process at one grid time: the state x_t and the prediction x0_hat made from it."""

    t: float
    x: Any  #: x_t (a tensor batch or udm.Sequences), first examples only, on the CPU
    x0_hat: Any  #: x0_hat predicted at t (the final sample at t = 0)


def _token_rows(x: Any, i: int) -> np.ndarray:
    """Row ``i`` of a token batch (``LongTensor`` or ``udm.Sequences``) as floats, NaN past its length."""
    tokens = getattr(x, "tokens", x)
    row = tokens[i].double().numpy().copy()
    lengths = getattr(x, "lengths", None)
    if lengths is not None:
        row[int(lengths[i]):] = np.nan
    return row


def _token_grid(snaps: list[Snapshot], which: str) -> np.ndarray:
    """Ids ``(times, width)`` of example 0 at every snapshot (NaN past its length)."""
    rows = [_token_rows(getattr(s, which), 0) for s in snaps]
    grid = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for r, row in enumerate(rows):
        grid[r, :len(row)] = row
    return grid


def _token_panel(ax: Any, snaps: list[Snapshot], grid: np.ndarray, vocab_size: int) -> None:
    data = np.where(np.isfinite(grid) & (grid < vocab_size), grid, np.nan)
    special = np.isfinite(grid) & ~np.isfinite(data)  # [MASK] and other ids outside the vocabulary
    ax.imshow(np.where(special, 1.0, np.nan), cmap="Greys", vmin=0, vmax=4, aspect="auto", interpolation="nearest")
    ax.imshow(data, cmap="tab20", vmin=0, vmax=max(vocab_size - 1, 1), aspect="auto", interpolation="nearest")
    if grid.size <= 800:
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(c, r, "M" if special[r, c] else str(int(v)), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(snaps)), [f"{s.t:.2f}" for s in snaps])
    ax.set_xlabel("position")
    ax.set_ylabel("t")


def denoising_figure(snaps: list[Snapshot], *, data_kind: str, value_range: tuple[float, float] | None = None,
                     title: str = "", vocab_size: int | None = None, examples: int = 4) -> Any:
    """The reverse process at the grid times of ``snaps`` (decreasing t): x_t next to x0_hat."""
    if data_kind != "continuous":  # tokens: ids per position, one row per time, first example
        fig = _figure(10.0, 1.2 + 0.3 * len(snaps))
        axes = fig.subplots(1, 2, squeeze=False)[0]
        grids = {which: _token_grid(snaps, which) for which in ("x", "x0_hat")}
        if vocab_size is None:  # every id seen is a data token
            vocab_size = int(max(np.nanmax(g) if np.isfinite(g).any() else 0 for g in grids.values())) + 1
        for ax, which, name in ((axes[0], "x", "x_t"), (axes[1], "x0_hat", "x0_hat")):
            _token_panel(ax, snaps, grids[which], vocab_size)
            ax.set_title(f"{name} (example 0; M = id outside the vocabulary)", fontsize="small")
        fig.suptitle(title, fontsize="medium")
        return fig
    first = torch.as_tensor(snaps[0].x)
    if first.ndim == 2 and first.shape[1] == 2:  # 2-D points: the whole cloud per time
        fig = _figure(1.8 * len(snaps) + 0.6, 4.2)
        axes = fig.subplots(2, len(snaps), squeeze=False, sharex=True, sharey=True)
        lo, hi = _limits([_points(snaps[-1].x)])
        for c, s in enumerate(snaps):
            for r, (arr, name) in enumerate(((s.x, "x_t"), (s.x0_hat, "x0_hat"))):
                ax, pts = axes[r][c], _points(arr)
                ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0" if r == 0 else "C2", linewidths=0)
                ax.set_xlim(lo[0], hi[0])
                ax.set_ylim(lo[1], hi[1])
                ax.set_title(f"t = {s.t:.2f}" if r == 0 else "", fontsize="small")
                ax.set_ylabel(name if c == 0 else "")
                ax.set_xlabel("x[0]" if r == 1 else "")
                ax.tick_params(labelsize=6)
        fig.suptitle(title, fontsize="medium")
        return fig
    k = min(examples, first.shape[0])  # images: per example a row of x_t and a row of x0_hat
    fig = _figure(0.9 * len(snaps) + 0.8, 0.9 * 2 * k + 0.6)
    axes = fig.subplots(2 * k, len(snaps), squeeze=False)
    for c, s in enumerate(snaps):
        for i in range(k):
            for j, (arr, name) in enumerate(((s.x, "x_t"), (s.x0_hat, "x0_hat"))):
                ax = axes[2 * i + j][c]
                ax.imshow(tile(torch.as_tensor(arr)[i:i + 1], value_range, pad=0), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"t = {s.t:.2f}" if 2 * i + j == 0 else "", fontsize="small")
                ax.set_ylabel(f"{name} #{i}" if c == 0 else "", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig
