"""Output paths, for every command that writes (train, bench, plot, explain, experiment, gpu-check, export).

Two rules, one helper each:

* **Check up front.** :func:`check_output_dir` / :func:`check_output_file` run before any work: a path
  that names a file where a folder is wanted (or the reverse), that sits under a file, or where nothing
  can be created (read-only, no permission) raises :class:`~fast_timesformer.errors.OutputPathError`,
  one line naming the path and the cause (exit 2 at the command line). Writability is tried, not
  guessed: a probe file is created and removed (``os.access`` says yes to root on a read-only mount).
* **A failed write is one line, and nothing earlier is lost.** :func:`writing` turns any failure of the
  write it guards (``OSError``: disk full, I/O error; safetensors' ``SafetensorError``, which is not an
  ``OSError``) into :class:`~fast_timesformer.errors.WriteFailedError` naming the path and the cause.
  :func:`write_text`, :func:`write_json` and :func:`save_figure` write to a temporary file next to the
  destination and move it over with ``os.replace``: the destination holds the old file or the whole new
  one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from typing import Iterator

from .errors import OutputPathError, WriteFailedError

__all__ = ["check_output_dir", "check_output_file", "writing", "write_text", "write_json", "save_figure",
           "write_cause"]


def write_cause(e: BaseException) -> str:
    """Why a write failed, in words: ``"no space left on the device"``, ``"Read-only file system"``, or the
    first line of a library's message (safetensors wraps the OS error in its own text)."""
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return "no space left on the device"
        return str(e.strerror or e)
    text = str(e)
    m = re.search(r"\(os error (\d+)\)", text)  # SafetensorError: "... I/O error: No space left on device (os error 28)"
    if m:
        code = int(m.group(1))
        return "no space left on the device" if code == errno.ENOSPC else os.strerror(code)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _failure_types() -> tuple:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return (OSError,)
    return (OSError, SafetensorError)


def check_output_dir(path, *, option: str = "--out", create: bool = False) -> str:
    """Make sure ``path`` is, or can become, a folder this process can create files in; returns it as a str.
    Raises :class:`OutputPathError` naming ``option`` and the path otherwise.

    Nothing is left behind: a folder that does not exist yet is tried in its nearest existing parent (a
    probe file is created there and removed at once) and only made with ``create=True``."""
    p = os.fspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise OutputPathError(p, f"{option} names an existing file; it must be a folder")
    existing = p
    while not os.path.exists(existing):
        up = os.path.dirname(os.path.abspath(existing))
        if up == existing:
            break
        existing = up
    if os.path.exists(existing) and not os.path.isdir(existing):
        raise OutputPathError(p, f"{option} cannot be a folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
        if create:
            os.makedirs(p, exist_ok=True)
    except OSError as e:
        raise OutputPathError(p, f"{option} is not writable ({write_cause(e)})") from None
    return p


def check_output_file(path, *, option: str = "--out") -> str:
    """Make sure a file can be written at ``path`` (its folder is created if needed; an existing file
    there is fine, a folder is not); returns it as a str."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise OutputPathError(p, f"{option} names a folder; it must be a file")
    folder = os.path.dirname(os.path.abspath(p))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputPathError(p, f"{option} cannot be written: {folder} is a file, not a folder")
    try:
        check_output_dir(folder, option=option)
    except OutputPathError as e:
        raise OutputPathError(p, e.problem) from None
    return p


@contextlib.contextmanager
def writing(path, what: str = "could not be written") -> Iterator[None]:
    """Guard a write of ``path``: any ``OSError`` or ``SafetensorError`` inside becomes
    :class:`WriteFailedError` (``"<path>: <what> (<cause>)"``); a :class:`WriteFailedError` passes as is."""
    try:
        yield
    except WriteFailedError:
        raise
    except _failure_types() as e:
        raise WriteFailedError(os.fspath(path), f"{what} ({write_cause(e)})") from None


@contextlib.contextmanager
def _replacing(path) -> Iterator[str]:
    """A temporary path next to ``path`` to write; moved over ``path`` on success, removed on failure."""
    p = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(p))
    with writing(p):
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(p) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> str:
    """Write ``text`` to ``path`` atomically; a failure raises :class:`WriteFailedError` and leaves what was
    there before."""
    with _replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return os.fspath(path)


def write_json(path, data, **kwargs) -> str:
    """:func:`write_text` of ``json.dumps(data, **kwargs)``."""
    return write_text(path, json.dumps(data, **kwargs))


def save_figure(fig, path, **kwargs) -> str:
    """``fig.savefig(path, **kwargs)`` atomically (the format from ``path``'s extension)."""
    fmt = kwargs.pop("format", None) or os.path.splitext(os.fspath(path))[1].lstrip(".") or None
    with _replacing(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
    return os.fspath(path)
