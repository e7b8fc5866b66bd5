"""``fast-timesformer`` command line: ``backends`` (what runs here) and the other subcommands."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Modules that add their own subcommands: each defines ``add_subcommands(subparsers)``; a subcommand's
# handler is set with ``parser.set_defaults(func=...)`` and returns an exit code.
SUBCOMMAND_MODULES = (
    "fast_timesformer.models.cli",
    "fast_timesformer.bench.cli",
    "fast_timesformer.train.cli",
    "fast_timesformer.train.data_cli",
    "fast_timesformer.explain.cli",
    "fast_timesformer.export",
)


def format_table(rows, columns):
    """Plain text table (list of dicts -> aligned columns)."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(x.rstrip() for x in out)


def cmd_backends(args) -> int:
    from . import get_backend, list_backends

    rows = [get_backend(n).describe() for n in list_backends()]
    print(format_table(rows, ["name", "kind", "devices", "dtypes", "backward", "dropout", "masks", "export", "status"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast-timesformer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backends", help="list the attention backends and whether they run on this machine")
    b.set_defaults(func=cmd_backends)
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_subcommands(sub)
    return p


def main(argv=None) -> int:
    """Parse ``argv`` and run the subcommand; errors propagate (for use from Python and tests)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def console(argv=None) -> int:
    """The ``fast-timesformer`` entry point: like :func:`main`, but a user error (bad option, missing
    file, refused backend) prints one line and exits 2 instead of a traceback
    (``FAST_TIMESFORMER_TRACEBACK=1`` shows the traceback)."""
    from .backends import BackendUnavailable
    from .errors import FastTimesformerError

    try:
        return main(argv)
    except (FastTimesformerError, ValueError, TypeError, FileNotFoundError, BackendUnavailable) as e:
        if os.environ.get("FAST_TIMESFORMER_TRACEBACK"):
            raise
        print(f"fast-timesformer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console())
