"""The plot colours of every figure: a scheme or backend gets the colour of its registration index in its palette
(cycling), so one registered from user code has one, the same in every plot. Schemes: the registry's palette
(:func:`~fast_timesformer.scheme_color`)."""
from __future__ import annotations

#: backend colours, by registration index
BACKENDS = ("#333333", "#e377c2", "#bcbd22", "#8c564b", "#9467bd", "#17becf", "#ff7f0e", "#1f77b4")
OURS, PEER, BOUND = "#2ca02c", "#7f7f7f", "#bbbbbb"  # ours vs a peer implementation; a bound (the roofline)


def _index(name: str, names: list) -> int:
    """Registration index; a name this process does not register: after them, stable by its characters."""
    return names.index(name) if name in names else len(names) + sum(map(ord, name))


def scheme_colour(name: str) -> str:
    from ..schemes import PALETTE, SCHEMES, scheme_color

    return scheme_color(name) if name in SCHEMES else PALETTE[_index(name, []) % len(PALETTE)]


def backend_colour(name: str) -> str:
    """A backend's colour; a contender label such as ``regular[flash]`` takes its backend's, shaded per variant."""
    import matplotlib.colors as mc

    from ..backends import list_backends

    base, _, variant = name.partition("[")
    colour = BACKENDS[_index(base, list_backends()) % len(BACKENDS)]
    k = 0.25 + 0.5 * (sum(map(ord, variant)) % 7) / 6 if variant else 0  # toward white by a stable fraction
    return mc.to_hex([c + (1 - c) * k for c in mc.to_rgb(colour)])
