"""Run directories that never lose data: which folder a run writes, and writing into it safely.

A run directory is marked as udm's by a small JSON file ``.udm-run`` (written when the run claims it)
and is held by one process at a time through an exclusive lock on ``.udm-lock`` (``flock``: the
kernel releases it when the holder exits, however it exits, so a lock is never stale; the file names
the holder's pid and host for the refusal message). :func:`claim` refuses

* a non-empty folder that is not a udm run (``--out .``, ``run.out: ../other``): nothing in it is touched;
* a run directory whose files would overwrite the experiment file itself;
* a link planted where the run writes (``config.yaml -> ~/.bashrc``);
* a directory another live run holds;
* a fresh run into a directory that holds a run's outputs, unless ``overwrite`` (explicit) or ``resume``.

When the directory was not given (``--out``/``run.out``) it is derived from the experiment's name,
``runs/<name>``, and a taken one is never an error: the run gets the next free version, ``runs/<name>-2``,
``-3``, ... (like Lightning's ``version_N`` folders); ``resume`` picks the newest version.

Files are written by :func:`atomic_write` (temporary file, fsync, rename: a crash leaves the old or the
new file, and a rename replaces a planted link instead of writing through it) and appended to by
:func:`append_line` (which refuses to follow a link).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

try:  # POSIX; on other systems runs are not locked (see claim)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["MARKER", "LOCK", "OUTPUTS", "RunDir", "claim", "choose", "atomic_write", "write_via", "append_line",
           "read_text_nofollow", "is_run_dir"]

MARKER = ".udm-run"
LOCK = ".udm-lock"
#: what a run writes into its directory (besides the marker and the lock)
OUTPUTS = ("config.yaml", "metrics.jsonl", "eval.jsonl", "loss.png", "checkpoints", "samples", "variance")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


# ------------------------------------------------------------------------------------------ writing
def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, fsync, then rename over it."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise


def write_via(path: Path, write: Callable[[Path], Any]) -> None:
    """Let ``write(tmp)`` create a temporary file beside ``path``, then rename it over ``path`` (atomic)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` (created if missing); a link at ``path`` is an error, never followed."""
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a") as fh:
        fh.write(line if line.endswith("\n") else line + "\n")


def read_text_nofollow(path: Path) -> str:
    """The text of ``path``; a link there is an error, never followed."""
    with os.fdopen(_open_nofollow(path, os.O_RDONLY), "r") as fh:
        return fh.read()


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise ConfigError(f"run directory: {str(path)!r} must be a regular file, never a symbolic link; got a "
                              f"link to {os.readlink(path)!r}. Remove the link; udm does not write through links."
                              ) from None
        raise


@contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


# --------------------------------------------------------------------------------------- the folder
def is_run_dir(folder: Path) -> bool:
    """A udm run: the marker, or (runs written before markers existed) ``config.yaml`` + ``checkpoints/``."""
    if (folder / MARKER).is_file():
        return True
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _outputs(folder: Path) -> list[str]:
    """The run outputs present (marker and lock aside)."""
    return [n for n in _entries(folder) if n not in (MARKER, LOCK)]


def _free(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not folder.is_symlink() and not _outputs(folder)
                                   and (not _entries(folder) or is_run_dir(folder)))


def choose(base: Path, *, resume: bool) -> Path:
    """For a directory derived from the experiment's name: ``base``, ``base-2``, ``base-3``, ...

    A fresh run gets the first free one (missing, empty, or a claimed run directory with no outputs);
    ``resume`` gets the newest that exists (``base`` itself when there is none)."""
    pattern = re.compile(re.escape(base.name) + r"-(\d+)$")
    versions = {1: base} if base.exists() else {}
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            m = pattern.match(p.name)
            if m and int(m.group(1)) >= 2:
                versions[int(m.group(1))] = p
    if resume:
        return versions[max(versions)] if versions else base
    n = 1
    while not _free(versions.get(n, base if n == 1 else base.with_name(f"{base.name}-{n}"))):
        n += 1
    return base if n == 1 else base.with_name(f"{base.name}-{n}")


@dataclass
class RunDir:
    """A claimed run directory; :meth:`release` (or leaving the ``with`` block) drops the lock."""

    path: Path
    fd: int | None = None  #: the open, locked ``.udm-lock``

    def release(self) -> None:
        if self.fd is not None:
            with _quiet():
                os.ftruncate(self.fd, 0)  # no holder any more
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim(folder: Path, *, experiment: Path | None = None, resume: bool = False, overwrite: bool = False) -> RunDir:
    """Make ``folder`` this process's run directory (see the module docstring); raise :class:`ConfigError`
    (nothing touched) when it is not safe to write there."""
    where = "run.out"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{where}: the run directory must be a directory; got {str(folder)!r}, which is a file. "
                          f"Choose another --out.")
    if resume and not folder.is_dir():
        raise ConfigError(f"--resume: the run directory must exist and hold a checkpoint to resume; got "
                          f"{str(folder)!r}, which does not exist. Run without --resume to start it, or pass the "
                          f"run's directory with --out.")
    present = [n for n in _entries(folder) if n != LOCK]
    if present and not is_run_dir(folder):
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise ConfigError(f"{where}: the run directory must be empty or a udm run directory (with {MARKER}); got "
                          f"{str(folder)!r} holding {len(present)} other entries ({shown}). Choose a new or empty "
                          f"--out; udm never writes into a folder it did not create.")
    _refuse_experiment_inside(folder, experiment)
    for name in (*OUTPUTS, MARKER, LOCK):
        if (folder / name).is_symlink():
            raise ConfigError(f"{where}: {str(folder / name)!r} must not be a symbolic link; got a link to "
                              f"{os.readlink(folder / name)!r}. Remove the link; udm does not write through links.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        run = RunDir(folder, _lock(folder))
    except OSError as exc:
        raise ConfigError(f"{where}: the run directory must be writable; got {str(folder)!r} "
                          f"({exc.strerror or exc}). Choose another --out or fix its permissions.") from None
    try:
        _check_state(folder, resume, overwrite)
        if overwrite and not resume:
            for name in OUTPUTS:
                _remove(folder / name)
        if not (folder / MARKER).is_file():
            from . import __version__
            atomic_write(folder / MARKER, json.dumps({"udm": __version__, "created": time.time(),
                                                      "experiment": str(experiment) if experiment else None}) + "\n")
    except BaseException:
        run.release()
        raise
    return run


def _check_state(folder: Path, resume: bool, overwrite: bool) -> None:
    from .checkpoint import list_checkpoints

    outputs, has_checkpoint = _outputs(folder), bool(list_checkpoints(folder / "checkpoints"))
    if resume:
        if not has_checkpoint:
            raise ConfigError(f"--resume: the run directory must hold a checkpoint to resume; got {str(folder)!r} "
                              f"with none{' (only ' + ', '.join(outputs) + ')' if outputs else ''}. Run without "
                              f"--resume to start it{' (add --overwrite to replace those files)' if outputs else ''}.")
        return
    if overwrite or not outputs:
        return
    if has_checkpoint:
        raise ConfigError(f"run.out: the run directory must not hold checkpoints unless resuming; got {str(folder)!r} "
                          f"with a trained run. Pass --resume to continue it, --overwrite to replace it, or choose "
                          f"another --out (without --out and run.out, runs get a new versioned directory).")
    raise ConfigError(f"run.out: the run directory must hold no earlier outputs for a fresh run; got {str(folder)!r} "
                      f"with {', '.join(outputs)} (a run that stopped before its first checkpoint). Pass --overwrite "
                      f"to replace them, or choose another --out.")


def _refuse_experiment_inside(folder: Path, experiment: Path | None) -> None:
    if experiment is None or not experiment.exists():
        return
    for name in (*OUTPUTS, MARKER, LOCK):
        target = folder / name
        inside = target.exists() and (os.path.samefile(target, experiment) if target.is_file()
                                      else experiment.resolve().is_relative_to(target.resolve()))
        if inside:
            raise ConfigError(f"run.out: the run directory must not write over the experiment file; got "
                              f"{str(folder)!r}, where the run would replace {str(experiment)!r}. Copy the "
                              f"experiment elsewhere (e.g. cp {experiment} exp.yaml) and run that copy.")


def _lock(folder: Path) -> int | None:
    if fcntl is None:  # pragma: no cover - no flock on this platform: unlocked
        return None
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        try:
            info = json.loads(holder)
            who = f"pid {info['pid']} on host {info['host']} (since {time.ctime(info['started'])})"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        raise ConfigError(f"run.out: the run directory must not be in use by another run; got {str(folder)!r} held "
                          f"by {who}. Wait for it to finish, stop it, or choose another --out.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode(), 0)
    return fd


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
