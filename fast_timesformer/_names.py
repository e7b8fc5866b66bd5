"""One error for every registry lookup (backends, models, schemes): what was asked, what exists, and
the closest match."""
from __future__ import annotations

import difflib
from typing import Iterable


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> ValueError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}.{hint}")
