"""``fast-timesformer`` command line: ``backends`` (what runs here) and the other subcommands."""
from __future__ import annotations

import argparse
import sys


def _table(rows, columns):
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(out)


def cmd_backends(args) -> int:
    from . import get_backend, list_backends

    rows = [get_backend(n).describe() for n in list_backends()]
    print(_table(rows, ["name", "kind", "devices", "dtypes", "backward", "dropout", "status"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast-timesformer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backends", help="list the attention backends and whether they run on this machine")
    b.set_defaults(func=cmd_backends)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
