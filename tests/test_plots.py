"""The run's pictures (matplotlib): labelled axes, the data where it belongs, PNG sizes; the reverse-process
recorder; progress bars on terminals only; ``udm report``."""

from __future__ import annotations

import base64
import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import udm
from udm import _plots
from udm._progress import progress_bar
from udm.cli import main
from udm.errors import ConfigError
from udm.report import build_report
from udm.sampling import SnapshotRecorder

from conftest import run_tiny

ROWS = [{"step": 10 * (k + 1), "loss": float(np.exp(-k / 10) * (1 + 0.3 * (-1) ** k)), "lr": min(1.0, (k + 1) / 5) * 1e-3}
        for k in range(40)]


def _size(fig) -> tuple[int, int]:
    return Image.open(io.BytesIO(_plots.png_bytes(fig))).size


def test_smoothing_is_tensorboards_debiased_ema():
    assert np.allclose(_plots.smooth(np.full(7, 3.0), 0.9), 3.0)  # debiased: a constant stays put from the start
    y = np.array([1.0, 0.0, 0.0])
    w = 0.5  # s_k = sum_j (1-w) w^(k-j) y_j / (1 - w^(k+1))
    assert np.allclose(_plots.smooth(y, w), [1.0, 0.5 * 0.5 / 0.75, 0.25 * 0.5 / 0.875])


def test_loss_figure_has_labelled_log_axes_raw_points_smoothed_line_and_lr(tmp_path):
    fig = _plots.loss_figure(ROWS)
    ax, lr_ax = fig.axes
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "loss (log scale)" and ax.get_yscale() == "log"
    assert lr_ax.get_ylabel() == "learning rate" and ax.get_title() == "training loss"
    raw, smoothed = ax.get_lines()
    assert np.array_equal(raw.get_xdata(), [r["step"] for r in ROWS])
    assert np.array_equal(raw.get_ydata(), [r["loss"] for r in ROWS])
    tv = lambda v: np.abs(np.diff(np.log(v))).sum()  # noqa: E731 - the smoothed line wiggles less
    assert tv(smoothed.get_ydata()) < 0.5 * tv(raw.get_ydata())
    assert np.allclose(lr_ax.get_lines()[0].get_ydata(), [r["lr"] for r in ROWS])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss (logged)", "loss (smoothed)", "learning rate"]
    assert Image.open(_plots.save(fig, tmp_path / "loss.png")).size == (700, 360)
    linear = _plots.loss_figure([{"step": 1, "loss": -0.5, "lr": 1e-3}, {"step": 2, "loss": 0.5, "lr": 1e-3}])
    assert linear.axes[0].get_yscale() == "linear" and linear.axes[0].get_ylabel() == "loss"


def test_scatter_figure_draws_the_points_over_the_reference_with_axes_and_title():
    pts = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.5]])
    ref = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    fig = _plots.scatter_figure(pts, ref, "ddim, 10 steps\nsliced_wasserstein 0.05")
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x[0]", "x[1]") and "sliced_wasserstein 0.05" in ax.get_title()
    grey, blue = ax.collections
    assert np.allclose(grey.get_offsets(), ref.numpy()) and np.allclose(blue.get_offsets(), pts.numpy())
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < -1 and x1 > 1 and y0 < -1 and y1 > 1  # every sample inside the frame
    assert _size(fig) == (550, 550)


def test_tile_layout_and_range():
    x = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0)])
    img = _plots.tile(x, value_range=(-1, 1), nrow=2, pad=1)
    assert img.shape == (6, 11, 3)
    assert (img[1:5, 1:5] == 0).all() and (img[1:5, 6:10] == 1).all() and (img[0] == 1).all()
    assert _plots.tile(x, nrow=1, pad=0).shape == (8, 4, 3)  # one column; range from the batch's min/max


def test_image_grid_figure_is_captioned_and_legible():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fig = _plots.image_grid_figure(x, (-1, 1), "cold, 50 steps, seed 0")
    (ax,) = fig.axes
    assert ax.get_title() == "cold, 50 steps, seed 0"
    shown = ax.get_images()[0].get_array()
    assert np.allclose(shown[1:9, 1:9, 0], (x[0, 0].numpy() + 1) / 2)  # first image, unpadded, in [0, 1]
    w, h = _size(fig)
    assert w >= 300 and h >= 150  # 8x8 digits drawn large, not 8 pixels


def _snapshots(x: torch.Tensor, times=(1.0, 0.5, 0.0)) -> list[_plots.Snapshot]:
    return [_plots.Snapshot(t, x * t, x) for t in times]


def test_denoising_figures_label_x_t_and_x0_hat_rows_and_time_columns():
    imgs = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = _plots.denoising_figure(_snapshots(imgs), data_kind="continuous", value_range=(0, 1), title="t")
    assert len(fig.axes) == 2 * 3 * 3  # x_t and x0_hat rows per example, one column per time
    assert [fig.axes[r * 3].get_ylabel() for r in range(6)] == ["x_t #0", "x0_hat #0", "x_t #1", "x0_hat #1",
                                                                "x_t #2", "x0_hat #2"]
    assert [fig.axes[c].get_title() for c in range(3)] == ["t = 1.00", "t = 0.50", "t = 0.00"]
    pts = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    fig = _plots.denoising_figure(_snapshots(pts), data_kind="continuous")
    assert len(fig.axes) == 6 and fig.axes[0].get_ylabel() == "x_t" and fig.axes[3].get_ylabel() == "x0_hat"
    assert fig.axes[4].get_xlabel() == "x[0]" and fig.axes[1].get_title() == "t = 0.50"
    assert np.allclose(fig.axes[1].collections[0].get_offsets(), pts * 0.5)  # x_t at t = 0.5 (row 0, column 1)
    assert np.allclose(fig.axes[4].collections[0].get_offsets(), pts)  # x0_hat at t = 0.5 (row 1, column 1)
    tokens = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    masked = [_plots.Snapshot(1.0, torch.full_like(tokens, 4), tokens), _plots.Snapshot(0.0, tokens, tokens)]
    fig = _plots.denoising_figure(masked, data_kind="tokens", vocab_size=4)
    left, right = fig.axes
    assert (left.get_xlabel(), left.get_ylabel()) == ("position", "t")
    assert [t.get_text() for t in left.get_yticklabels()] == ["1.00", "0.00"]
    assert [t.get_text() for t in left.texts] == ["M"] * 4 + ["0", "1", "2", "3"]  # id 4 = [MASK]: outside the vocabulary


def test_snapshot_recorder_keeps_x_t_with_the_prediction_made_from_it():
    reg = udm.registry()
    corruption = reg.create("corruption", "gaussian", schedule="cosine")
    time = reg.create("time", "discrete", steps=100)
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    denoiser = lambda x, t, g: x0 + 0.1 * x  # noqa: E731 - x0_hat depends on x_t: a mismatched pair shows
    g = torch.Generator().manual_seed(1)
    x_init = corruption.sample_prior((6, 2), g)
    steps, seen = [], []
    recorder = SnapshotRecorder(x_init, 10, count=4, examples=3, then=steps.append)
    out = udm.sample(denoiser, corruption, time, shape=(6, 2), sampler="ddpm", steps=10, generator=g,
                     x_init=x_init, callback=recorder)
    states = [x_init] + [s.x for s in steps]  # the state at grid time i
    seen = [round(s.t * 100) for s in recorder.snapshots]
    assert seen == [100, 70, 30, 0] and len(steps) == 10  # indices 0, 3, 7 (round(10 i / 3)) and the sample
    for snap, i in zip(recorder.snapshots[:-1], (0, 3, 7)):
        assert torch.equal(snap.x, states[i][:3]) and torch.equal(snap.x0_hat, steps[i].x0_hat[:3])
        assert torch.allclose(snap.x0_hat, x0[:3] + 0.1 * snap.x)  # the prediction made from that very state
    assert torch.equal(recorder.snapshots[-1].x, out[:3]) and recorder.snapshots[-1].t == 0.0


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_draw_on_a_terminal_only():
    quiet = io.StringIO()
    with progress_bar(10, "train", stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
    tty = _Tty()
    with progress_bar(10, "train", stream=tty, start=2) as bar:
        bar.update(3)
        bar.set_postfix(loss="0.5", refresh=False)
    line = tty.getvalue().strip().split("\r")[-1]
    assert re.match(r"train:  50%\|.*\| 5/10 \[.*loss=0\.5\]", line), line
    never = _Tty()
    with progress_bar(10, "train", stream=never, enabled=False) as bar:
        bar.update(10)
    assert never.getvalue() == ""


def test_missing_matplotlib_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError, match=r"run\.plots: matplotlib must be installed to draw the run's pictures; got "
                                          r"ImportError .*pip install udm\[plots\]`, or set run\.plots: false\."):
        _plots.loss_figure(ROWS)


def _embedded(page: str) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(m))).size for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_of_a_run_and_its_cli(tiny_run, tmp_path, capsys):
    report = build_report(tiny_run)
    assert report.evaluations == 1 and report.images == 3  # loss curve, samples, reverse process
    assert _embedded(report.html) == [(700, 360), (550, 550), (1140, 420)]  # 5 steps: 6 snapshots
    assert "<th>sliced_wasserstein</th>" in report.html and "prediction: v" in report.html
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == report.html
    assert main(["report", str(tmp_path)]) == 2
    assert "udm report: error: RUN: the run directory must hold config.yaml; got " in capsys.readouterr().err


def test_plots_false_writes_no_pictures(tmp_path):
    run = run_tiny(tmp_path / "run", "run.plots=false")
    assert not list(run.rglob("*.png")) and (run / "samples" / "ddim-5steps-seed0.safetensors").is_file()
