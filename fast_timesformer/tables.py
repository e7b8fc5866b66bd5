"""Plain-text tables for the commands' output (``backends``, ``models``, the benchmark summaries)."""
from __future__ import annotations

__all__ = ["format_table"]


def format_table(rows, columns) -> str:
    """Plain text table (list of dicts -> aligned columns)."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(x.rstrip() for x in out)
