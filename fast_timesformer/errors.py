"""User-facing error types shared by the library and the command line.

Every error a user can cause by what they pass in (a file, an option, a size) is raised as a specific
exception whose message is one complete sentence naming the thing at fault; the ``fast-timesformer``
entry point prints that sentence as one line and exits with status 2. All of them derive from
:class:`FastTimesformerError` (and from ``ValueError`` where the cause is a bad value), so callers can
catch the family or one member.
"""
from __future__ import annotations

import importlib.metadata

__all__ = ["FastTimesformerError", "CorruptCheckpointError", "BadVideoError", "DeviceUnavailableError",
           "MissingDependencyError", "BrokenDependencyError", "import_failure", "WriteFailedError",
           "OutputPathError", "NonFiniteError", "DatasetLayoutError", "RunFolderBusyError"]


class FastTimesformerError(Exception):
    """Base of the user-facing errors: the message is one line naming the input and the problem."""


class CorruptCheckpointError(FastTimesformerError, ValueError):
    """A checkpoint file exists but cannot be read: truncated, garbage, or not in any format we read.

    Never described as "pickled objects": a damaged file is not an invitation to unpickle it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BadVideoError(FastTimesformerError, ValueError):
    """One or more video files cannot be decoded (corrupt, truncated, not a video)."""

    def __init__(self, problems):
        # problems: a list of (path, reason) pairs, or one (path, reason) pair
        if isinstance(problems, tuple) and len(problems) == 2 and isinstance(problems[1], str):
            problems = [problems]
        self.problems = [(str(p), str(r)) for p, r in problems]
        if len(self.problems) == 1:
            path, reason = self.problems[0]
            msg = f"{path}: {reason}"
        else:
            msg = f"{len(self.problems)} unreadable video files: " + "; ".join(
                f"{p}: {r}" for p, r in self.problems)
        super().__init__(msg)


class DeviceUnavailableError(FastTimesformerError, ValueError):
    """A device was asked for (``--device cuda``) that this machine does not have."""


class UnknownNameError(FastTimesformerError, ValueError):
    """A name that is not registered (scheme, model, backend, attention step, CLS mode, SDPA kernel); the
    message lists the known names and suggests the closest one."""

    def __init__(self, kind: str, name, known, message: str):
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(message)


class WriteFailedError(FastTimesformerError, OSError):
    """A file could not be written (disk full, permissions, I/O error); what was there before is unchanged."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        FastTimesformerError.__init__(self, f"{self.path}: {problem}")

    def __str__(self) -> str:  # OSError would format (errno, strerror); ours is the one sentence
        return f"{self.path}: {self.problem}"


class OutputPathError(FastTimesformerError, ValueError):
    """An output path that cannot be written, found before any work: it names a file where a folder is
    wanted (or the reverse), sits under a file, or is on a read-only or unwritable place."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NonFiniteError(FastTimesformerError, ValueError):
    """A NaN or an infinity where only finite numbers make sense (weights, logits, a loss, gradients).

    ``what`` names the thing checked (a checkpoint file, "the loss at step 12"), ``names`` the entries
    found non-finite (tensor names, or empty for a single tensor)."""

    def __init__(self, what: str, names=(), message: str = ""):
        self.what, self.names = str(what), list(names)
        super().__init__(message or f"{self.what} is not finite")


class DatasetLayoutError(FastTimesformerError, ValueError):
    """A video folder (or list) whose layout does not mean what it looks like: a class without videos,
    fewer than two classes, a file under two labels or in both splits, a link loop."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RunFolderBusyError(FastTimesformerError):
    """Another live process holds the lock of a run folder (``holder`` describes it)."""

    def __init__(self, path, holder: str):
        self.path, self.holder = str(path), holder
        super().__init__(f"{self.path} is in use by {holder}; wait for it to finish, or use another --out")


class TrainingInterrupted(FastTimesformerError):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving a checkpoint; ``exit_code`` is the
    conventional 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, path, message: str):
        self.signum, self.step, self.path = int(signum), int(step), str(path)
        self.exit_code = 128 + self.signum
        super().__init__(message)


class CheckpointConfigError(FastTimesformerError, ValueError):
    """A checkpoint does not record something needed to build its model (e.g. the number of attention
    heads of a bare state dict); the message names the keyword argument to pass."""


class CheckpointMismatchLineError(FastTimesformerError, ValueError):
    """A readable checkpoint whose tensors do not fit the model it is loaded into (missing, unexpected or
    mis-shaped keys), said in one line naming the file."""


def first_line(e: BaseException) -> str:
    """``"TypeName: first non-empty line of the message"``: an exception from a library quoted in our one line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class MissingDependencyError(FastTimesformerError, ImportError):
    """An optional package or comparison peer is not installed (``importlib.metadata`` finds no such
    distribution); the message names the extra that brings it."""


class BrokenDependencyError(FastTimesformerError, ImportError):
    """An optional package or comparison peer is installed but fails to import (a broken or incompatible
    release, a shadowing folder on ``sys.path``); the message quotes the real ImportError. Never reported as
    "not installed", and never a skip: it is a fault to fix, not a choice."""


def import_failure(distribution: str, error: ImportError, extra: str = "") -> ImportError:
    """The true error for a failed ``import`` of an optional package: :class:`MissingDependencyError` only when
    ``importlib.metadata`` has no distribution ``distribution``, else :class:`BrokenDependencyError` quoting
    ``error``. Use as ``except ImportError as e: raise import_failure("transformers", e, "bench") from e``."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        hint = f" (pip install 'fast_timesformer[{extra}]')" if extra else ""
        return MissingDependencyError(f"{distribution} is not installed{hint}")
    return BrokenDependencyError(f"{distribution} {version} is installed but fails to import: {first_line(error)}")
