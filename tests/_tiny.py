"""The tiny experiment the run-safety tests share (a run takes about 0.2 s in process), and helpers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from udm.cli import main

TINY = """\
corruption: {name: gaussian, schedule: cosine}
time: {name: discrete, steps: 100}
model: {name: mlp, width: 16, depth: 1, time_dim: 8}
data: {name: two_moons, n: 128}
train: {steps: 6, batch_size: 16, lr: 1e-2, ema: 0.9}
sample: {sampler: ddim, steps: 4, n: 32}
run: {checkpoint_every: 3, keep: 2, log_every: 2}
"""
#: the same experiment on tokens: masking, a transformer, bracket sequences
MASK = (TINY.replace("{name: gaussian, schedule: cosine}", "{name: mask, schedule: linear}")
        .replace("{name: mlp, width: 16, depth: 1, time_dim: 8}", "{name: transformer, width: 16, depth: 1, heads: 2}")
        .replace("{name: two_moons, n: 128}", "{name: brackets, n: 64, length: 8}"))


def experiment(folder: Path, monkeypatch, text: str = TINY) -> Path:
    """``folder/tiny.yaml`` holding ``text``, with ``folder`` the working directory."""
    monkeypatch.chdir(folder)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def udm(*args: str) -> int:
    """``udm ARGS`` in process (``--quiet`` added for run/train); the exit code."""
    return main([*args, "--quiet"] if args[0] in ("run", "train") else list(args))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (links as their target) -> hash of its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
