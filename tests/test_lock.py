"""The committed lock (requirements/lock.txt) covers setup.cfg: every requirement of the package and of every
extra is pinned there (torch excepted: TORCH_SPEC pins it), each pin inside setup.cfg's range. A dependency
added to setup.cfg without `make lock` fails here, before a fresh clone would install it unpinned."""
import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    reqs = [Requirement(ln.split("#")[0].strip()) for ln in lines if ln.split("#")[0].strip()]
    return [r for r in reqs if canonicalize_name(r.name) != "fast-timesformer"]  # `all` names our own extras


def pins() -> dict:
    out = {}
    for ln in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        ln = ln.split("#")[0].strip()
        if ln:
            name, _, version = ln.partition("==")
            assert version, f"lock line {ln!r} is not NAME==VERSION"
            out[canonicalize_name(name)] = version
    return out


def test_every_requirement_is_pinned_inside_its_range():
    locked = pins()
    assert "torch" not in locked, "torch is pinned by TORCH_SPEC, not by the lock"
    problems = []
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        if name not in locked:
            problems.append(f"{req.name} is not in the lock (run make lock)")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req.name}=={locked[name]} is outside setup.cfg's {req.specifier}")
    assert not problems, problems
