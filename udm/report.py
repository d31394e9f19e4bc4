"""``udm report RUN``: one self-contained HTML page summarising a run directory.

The page holds the metrics of every evaluation (``eval.jsonl``), the loss and learning-rate curve
(redrawn from ``metrics.jsonl``), every evaluation's sample picture and reverse-process strip (PNG
files of ``samples/``, embedded as ``data:`` URIs so the one file can be mailed or attached), the first
lines of token samples, and the resolved ``config.yaml``. It opens in any browser, offline.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import _artifacts, _plots
from .errors import ConfigError

__all__ = ["Report", "build_report", "write_report"]

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.3em 0}pre{background:#f7f7f7;
padding:.8em;overflow-x:auto}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"""


@dataclass
class Report:
    """What :func:`build_report` found and wrote."""

    html: str
    images: int  #: embedded PNG pictures
    evaluations: int  #: rows of eval.jsonl


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, caption: str) -> str:
    return (f'<figure><img src="{_png_uri(data)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _metrics_table(evals: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(k for e in evals for k in e.get("eval", {})))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("step", "sampler", "steps", "seed", *names))
    rows = []
    for e in evals:
        cells = [e.get("step"), e.get("sampler"), e.get("sample_steps"), e.get("seed")]
        cells += [f"{e['eval'][n]:.6g}" if n in e.get("eval", {}) else "" for n in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>" if evals else "<p>No evaluation yet (eval.jsonl).</p>"


def _samples(run_dir: Path, evals: list[dict[str, Any]]) -> tuple[list[str], int]:
    parts, images, seen = [], 0, set()
    for e in evals:
        stem = _artifacts.samples_stem(e)
        if stem in seen:
            continue
        seen.add(stem)
        folder = run_dir / "samples"
        for path, caption in ((folder / f"{stem}.png", f"samples: {stem}"),
                              (folder / f"{stem}-denoising.png", f"reverse process: {stem}")):
            if path.is_file():
                parts.append(_img(path.read_bytes(), caption))
                images += 1
        text = folder / f"{stem}.txt"
        if text.is_file():
            lines = text.read_text().splitlines()
            parts.append(f"<p>Token samples {html.escape(stem)} (first {min(len(lines), 16)} of {len(lines)}):</p>"
                         f"<pre>{html.escape(chr(10).join(lines[:16]))}</pre>")
    return parts, images


def build_report(run_dir: str | Path) -> Report:
    """The HTML summary of ``run_dir`` (needs ``config.yaml``; everything else is shown when present)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"RUN: the run directory must hold config.yaml; got {str(run_dir)!r}. "
                          f"Run an experiment first (`udm run EXP.yaml`) and pass its run directory.")
    cfg = yaml.safe_load(config.read_text()) or {}
    evals = _artifacts.read_jsonl(run_dir / "eval.jsonl")
    rows = [r for r in _artifacts.read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    title = f"udm run {run_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    named = ", ".join(f"{s}: {cfg[s].get('name', cfg[s].get('file', '?'))}"
                      for s in ("corruption", "time", "model", "data") if isinstance(cfg.get(s), dict))
    last = rows[-1]["step"] if rows else 0
    body.append(f"<p>{html.escape(named)}; trained {last} steps. Versions: "
                f"{html.escape(str((cfg.get('versions') or {}).get('udm', '?')))} (udm), "
                f"{html.escape(str((cfg.get('versions') or {}).get('torch', '?')))} (torch).</p>")
    body += ["<h2>Metrics</h2>", _metrics_table(evals), "<h2>Training</h2>"]
    curve = _plots.png_bytes(_plots.loss_figure(rows))
    body.append(_img(curve, "loss per logged step (raw and smoothed) and learning rate"))
    samples, images = _samples(run_dir, evals)
    body += ["<h2>Samples</h2>", *(samples or ["<p>No samples yet (samples/).</p>"])]
    body += ["<h2>Configuration (resolved)</h2>", f"<pre>{html.escape(config.read_text())}</pre>"]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    return Report(page, images + 1, len(evals))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (default ``RUN/report.html``); returns the path."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    page = build_report(run_dir).html
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
