"""``fast-timesformer`` command line: ``backends`` (what runs here) and the other subcommands."""
from __future__ import annotations

import argparse
import os
import sys

from . import export
from .backends import BackendUnavailable, get_backend, list_backends
from .bench import cli as bench_cli
from .errors import FastTimesformerError
from .explain import cli as explain_cli
from .export import cpu_bench  # noqa: F401 (registers the cpu-inference suite of 'bench')
from .models import cli as models_cli
from .outputs import write_cause
from .tables import format_table
from .train import cli as train_cli
from .train import data_cli

# Modules that add their own subcommands: each defines ``add_subcommands(subparsers)``; a subcommand's
# handler is set with ``parser.set_defaults(func=...)`` and returns an exit code.
SUBCOMMAND_MODULES = (models_cli, bench_cli, train_cli, data_cli, explain_cli, export)


def cmd_backends(args) -> int:
    rows = [get_backend(n).describe() for n in list_backends()]
    print(format_table(rows, ["name", "kind", "devices", "dtypes", "backward", "dropout", "masks", "sequences", "export",
                             "status"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast-timesformer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backends", help="list the attention backends and whether they run on this machine")
    b.set_defaults(func=cmd_backends)
    for module in SUBCOMMAND_MODULES:
        module.add_subcommands(sub)
    return p


def main(argv=None) -> int:
    """Parse ``argv`` and run the subcommand; errors propagate (for use from Python and tests)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def console(argv=None) -> int:
    """The ``fast-timesformer`` entry point: like :func:`main`, but a user error (bad option, missing
    file, refused backend) prints one line and exits 2 instead of a traceback, and so does any failure to
    read or write a file that no command turned into its own sentence (an ``OSError``: the path and the
    cause) (``FAST_TIMESFORMER_TRACEBACK=1`` shows the traceback)."""
    try:
        return main(argv)
    except (FastTimesformerError, ValueError, TypeError, OSError, BackendUnavailable) as e:
        if os.environ.get("FAST_TIMESFORMER_TRACEBACK"):
            raise
        line = str(e)
        if isinstance(e, OSError) and not isinstance(e, FastTimesformerError) and e.filename is not None:
            line = f"{e.filename}: {write_cause(e)}"
        print(f"fast-timesformer: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console())
