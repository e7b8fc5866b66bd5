"""One error for every name lookup (backends, models, schemes, attention steps, CLS modes, SDPA kernels):
what was asked, what exists, and the closest match."""
from __future__ import annotations

import difflib
from typing import Iterable, List, Mapping, Optional


def close_match(name: str, known: Iterable[str], aliases: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The known name ``name`` most likely stands for, or None.

    difflib's ratio alone misses abbreviations (``'divided'`` is 7 of the 18 letters of
    ``'divided_space_time'``: ratio 0.56 < 0.6), so a known name that starts with, or contains, what was
    typed (case-insensitive) wins when it is the only one; otherwise the closest by ratio.
    """
    known = [k for k in known if isinstance(k, str)]
    low = str(name).strip().lower()
    if aliases and aliases.get(low) in known:  # another word for the same thing ("temporal" -> "time")
        return aliases[low]
    if low:
        for test in (lambda k: k.lower().startswith(low), lambda k: low in k.lower()):
            hits = [k for k in known if test(k)]
            if len(hits) == 1:
                return hits[0]
    close = difflib.get_close_matches(str(name), known, n=1)
    if not close:  # case slips: 'Regular', 'AXIAL'
        by_lower = {k.lower(): k for k in known}
        close = [by_lower[c] for c in difflib.get_close_matches(low, list(by_lower), n=1)]
    return close[0] if close else None


def lookup(registry: Mapping, name, kind: str, cls: type, *, what: str, also_known: Iterable[str] = ()):
    """``registry[name]`` for a registry of ``cls`` objects (an instance of ``cls`` passes through): a name that
    is not a str raises ``TypeError``, an unknown one :func:`unknown_name_error` listing ``registry`` and
    ``also_known``. ``what``: the argument's name in the TypeError ("backend", "scheme")."""
    if isinstance(name, cls):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a name (str), got {type(name).__name__}")
    try:
        return registry[name]
    except KeyError:
        raise unknown_name_error(kind, name, list(registry) + list(also_known)) from None


def unknown_name_error(kind: str, name, known: Iterable[str],
                       aliases: Optional[Mapping[str, str]] = None) -> ValueError:
    """``UnknownNameError("unknown scheme 'divided'; known: ... Did you mean 'divided_space_time'?")``."""
    from .errors import UnknownNameError

    known: List[str] = [str(k) for k in known]
    close = close_match(str(name), known, aliases)
    hint = f" Did you mean {close!r}?" if close else ""
    return UnknownNameError(kind, name, known, f"unknown {kind} {name!r}; known: {', '.join(known)}.{hint}")


def misplaced_name_error(name, given_as: str, kinds: Mapping[str, Iterable[str]]) -> ValueError:
    """The error for a keyword ``name`` given as ``given_as`` (``"TimeSformer argument or regular option"``)
    that is none of the kinds of argument in ``kinds`` (kind -> its names, e.g. ``{"TimeSformer argument":
    [...], "regular option": [...], "neighborhood scheme option": [...]}``) where it was given.

    Where ``name`` is exactly a name of another kind, the message says it belongs there; otherwise it
    suggests the closest name over all kinds, saying which kind that one is."""
    from .errors import UnknownNameError

    kinds = {kind: [str(k) for k in known] for kind, known in kinds.items()}
    every = [k for known in kinds.values() for k in known]
    for kind, known in kinds.items():
        if name in known:
            return UnknownNameError(given_as, name, every, f"{name!r} is a {kind}, not a {given_as}: pass it as a "
                                                           f"{kind}")
    listed = "; ".join(f"{kind}s: {', '.join(known)}" for kind, known in kinds.items() if known)
    close = close_match(str(name), every)
    hint = ""
    if close is not None:
        kind = next(kind for kind, known in kinds.items() if close in known)
        hint = f" Did you mean the {kind} {close!r}?"
    return UnknownNameError(given_as, name, every, f"unknown {given_as} {name!r} ({listed}).{hint}")
