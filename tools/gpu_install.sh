#!/usr/bin/env bash
# Install this project on a bare GPU machine without touching its torch or triton (no network there):
#   - the carried wheels in .whl/ (pure-Python extras, see docs/gpu.md for the one-line download), into
#     /tmp/ft_site, which the caller puts on PYTHONPATH;
#   - the package itself, editable, with no dependencies, no build isolation, no index.
# Usage: tools/gpu_install.sh [PYTHON]   (default python3); prints what it did; exit 0 even when an
# optional wheel fails (gpu-check records what is importable).
set -u
PY=${1:-python3}
SITE=/tmp/ft_site
cd "$(dirname "$0")/.."
echo "install: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"
$PY -c 'import torch, triton; print("install: keeping torch", torch.__version__, "and triton", triton.__version__)' \
    2>/dev/null || echo "install: torch or triton missing on this machine"
if ls .whl/*.whl >/dev/null 2>&1; then
    mkdir -p "$SITE"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        && echo "install: carried wheels -> $SITE: $(cd .whl && ls *.whl | tr '\n' ' ')" \
        || echo "install: carried wheels FAILED to install (gpu-check goes on without them)"
else
    echo "install: no carried wheels in .whl/ (performer, timesformer-pytorch, xformers stay absent)"
fi
if $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/tmp/ft_pip_err.txt; then
    echo "install: fast_timesformer (editable, --no-deps --no-build-isolation --no-index)"
elif $PY -m pip install -q --no-deps --no-build-isolation --no-index --target "$SITE" . 2>>/tmp/ft_pip_err.txt; then
    echo "install: editable install failed ($(head -c 300 /tmp/ft_pip_err.txt)); plain install into $SITE"
else
    echo "install: pip could not install the package ($(tail -c 300 /tmp/ft_pip_err.txt)); copying the sources into $SITE"
    mkdir -p "$SITE" && cp -r fast_timesformer "$SITE/"
fi
(cd /tmp && $PY -c 'import fast_timesformer.kernels.divided_attention as k, fast_timesformer as f; print("install: import ok,", f.__file__)') \
    || echo "install: fast_timesformer does not import (see above)"
