"""Nothing at the repository root shadows an installed distribution's import name.

``python -m pytest``, ``python -m fast_timesformer.cli`` and a Python prompt opened in the clone all put the
repository root first on ``sys.path``; a folder there named like an installed package (a ``kernels/`` package
did, and transformers 5 imports the PyPI ``kernels``) silently replaces it. Checked in a fresh interpreter
started in the repository root, exactly as those commands start.
"""
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.metadata, importlib.util, json, os, sys
root = os.path.realpath(sys.argv[1])
env = os.path.realpath(sys.prefix)  # a virtualenv made inside the clone (.venv/) is where installs belong
ours = {"fast_timesformer", "fast-timesformer"}
bad = []
for name, dists in sorted(importlib.metadata.packages_distributions().items()):
    if not name.isidentifier() or {d.lower().replace("_", "-") for d in dists} <= ours:
        continue
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a module that cannot even be located is no shadow
        continue
    if spec is None:
        continue
    places = [spec.origin] if spec.origin and os.path.isabs(spec.origin) else []
    places += list(spec.submodule_search_locations or [])
    inside = [p for p in map(os.path.realpath, places)
              if p.startswith(root + os.sep) and not p.startswith(env + os.sep)]
    if inside:
        bad.append([name, dists, inside])
print(json.dumps(bad))
"""


def test_no_root_name_shadows_an_installed_distribution():
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    shadowed = json.loads(out.stdout)
    assert shadowed == [], f"repository paths shadow installed distributions: {shadowed}"


def test_transformers_imports_from_the_repository_root():
    try:  # skipped only where the distribution is absent, never because its import fails
        importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers (extras 'bench', 'test') is not installed")
    out = subprocess.run([sys.executable, "-c", "from transformers import TimesformerForVideoClassification"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
