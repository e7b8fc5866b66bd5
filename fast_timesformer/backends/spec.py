"""Which backend runs which attention step: one parser for every place that takes the choice.

Accepted forms (the layer-level :func:`~fast_timesformer.attention.set_backend` /
:func:`~fast_timesformer.attention.use_backend`, ``TimeSformer``, ``GenerativeTimeSformer``, the trainer and
``fast-timesformer train --backend`` all go through :func:`parse_backend_spec`)::

    "regular"                                          every step
    "time=regular,space=performer"                     per step (the command line's form)
    {"time": "regular", "space": "performer"}          per step
    {"space": ("performer", {"nb_features": 64})}      per step, with that step's options
    {"space": ["performer", {"nb_features": 64}]}      the same, as JSON stores it

Options (``options=``) apply to every step the spec sets; a key ``"<step>.<option>"`` (the command line's
``--backend-option space.nb_features=64``) applies to that step only. Unknown step and backend names raise
:class:`~fast_timesformer.errors.UnknownNameError` with the close match.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

from .._names import unknown_name_error

__all__ = ["BackendSpec", "parse_backend_spec", "STEP_ALIASES", "check_step_names", "DEFAULT_BACKEND"]

#: the backend a step runs when nothing names one (every layer's and model's default, the trainer's, and the
#: steps a mapping leaves out): exact softmax attention through torch SDPA, on every device
DEFAULT_BACKEND = "regular"

#: words people use for the steps (the module prefixes among them) -> the step names
STEP_ALIASES = {"temporal": "time", "spatial": "space", "t": "time", "s": "space", "attn": "space",
                "w": "width", "h": "height", "l": "local", "g": "global", "st": "joint"}


def check_step_names(given, steps) -> None:
    """Raise :class:`~fast_timesformer.errors.UnknownNameError` (with the close match) for the first
    name in ``given`` that is not one of ``steps``."""
    unknown = [s for s in given if s not in steps]
    if unknown:
        raise unknown_name_error("attention step", unknown[0], list(steps), STEP_ALIASES)


def _check_backend_name(name) -> str:
    from .registry import AUTO, get_backend

    if not isinstance(name, str):
        raise TypeError(f"a backend is named by a str, got {type(name).__name__} ({name!r})")
    if name != AUTO:
        get_backend(name)  # an unknown name raises with the close match
    return name


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend choice. ``default``: ``(name, options)`` for every step (a single name), or None;
    ``steps``: ``{step: (name, options)}`` for the steps named one by one; ``shared``: the options given
    for every step (also given to steps that ``table`` fills in with its fallback)."""

    default: Optional[tuple] = None
    steps: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)

    def check_steps(self, steps: Sequence[str]) -> None:
        check_step_names(self.steps, steps)

    def table(self, steps: Sequence[str], fallback: Optional[str] = DEFAULT_BACKEND) -> dict:
        """``{step: (name, options)}`` for every one of ``steps``: named steps as given, the others the
        single name's (or ``fallback``'s, without options; None: left out)."""
        self.check_steps(steps)
        out = {}
        for s in steps:
            if s in self.steps:
                out[s] = self.steps[s]
            elif self.default is not None:
                out[s] = self.default
            elif fallback is not None:
                out[s] = (fallback, dict(self.shared))
        return out

    def for_steps(self, steps: Sequence[str]) -> dict:
        """``{step: (name, options)}`` for the steps this spec sets (a switch leaves the others alone)."""
        return self.table(steps, fallback=None)

    def to_json(self):
        """The JSON form a config stores: a name, or ``{step: name or [name, options]}`` (the single name's
        options, if any, are left to the caller: they are the model's ``**backend_options``)."""
        if self.default is not None and not self.steps:
            return self.default[0]
        if self.default is not None:
            raise ValueError("step-qualified backend options (e.g. space.nb_features) need a per-step "
                             "backend such as 'time=regular,space=performer'")
        out = {}
        for step, (name, opts) in self.steps.items():
            own = {k: v for k, v in opts.items() if self.shared.get(k, _MISSING) != v}
            out[step] = [name, own] if own else name
        return out


_MISSING = object()


def _entry(step: str, value, shared: dict) -> tuple:
    if isinstance(value, str):
        return _check_backend_name(value), dict(shared)
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], Mapping):
        return _check_backend_name(value[0]), {**shared, **value[1]}
    raise ValueError(f"backend for step {step!r} must be a name or (name, options), got {value!r}")


def parse_backend_spec(spec: Union[str, Mapping, BackendSpec], options: Optional[Mapping] = None) -> BackendSpec:
    """Parse any accepted form (see the module docstring) into a :class:`BackendSpec`.

    ``options``: backend options for every step; ``"<step>.<option>"`` keys for one step only (that step
    must be set by ``spec``, or ``spec`` must be a single name, which then runs that step too).
    """
    if isinstance(spec, BackendSpec):
        if options:
            raise ValueError("options cannot be added to a parsed BackendSpec")
        return spec
    options = dict(options or {})
    shared = {k: v for k, v in options.items() if "." not in k}
    per_step: dict = {}
    for key, value in options.items():
        if "." in key:
            step, _, name = key.partition(".")
            if not step or not name:
                raise ValueError(f"backend option {key!r}: use OPTION=VALUE or STEP.OPTION=VALUE")
            per_step.setdefault(step, {})[name] = value
    if isinstance(spec, str) and "=" in spec:
        mapping = {}
        for part in spec.split(","):
            step, sep, name = part.partition("=")
            if not sep or not step.strip() or not name.strip():
                raise ValueError(f"bad backend spec {spec!r}: use a name or step=name pairs, e.g. "
                                 "'time=regular,space=performer'")
            mapping[step.strip()] = name.strip()
        spec = mapping
    if isinstance(spec, str):
        return BackendSpec(default=(_check_backend_name(spec), dict(shared)),
                           steps={s: (spec, {**shared, **o}) for s, o in per_step.items()}, shared=shared)
    elif isinstance(spec, Mapping):
        steps = {}
        for step, value in spec.items():
            if not isinstance(step, str):
                raise TypeError(f"attention steps are named by str, got {step!r}")
            steps[step] = _entry(step, value, shared)
        missing = sorted(set(per_step) - set(steps))
        if missing:
            raise ValueError(f"backend options name step(s) {missing} that the backend choice does not set "
                             f"(it sets {sorted(steps)})")
        for step, opts in per_step.items():
            name, given = steps[step]
            steps[step] = (name, {**given, **opts})
        return BackendSpec(default=None, steps=steps, shared=shared)
    raise TypeError(f"backend must be a name or a mapping step -> name, got {type(spec).__name__}")
