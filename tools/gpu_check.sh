#!/usr/bin/env bash
# The whole GPU check in one call (what `make gpu-check OUT=dir` runs; needs no make):
#   bash tools/gpu_check.sh OUT_DIR [gpu-check options...]
# Installs the project (tools/gpu_install.sh: carried wheels + editable package, torch/triton untouched),
# then `python -m fast_timesformer.cli gpu-check --out OUT_DIR`. Files: docs/gpu.md.
set -u
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR [options]}
shift
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/ft_site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
bash tools/gpu_install.sh "$PY" > /tmp/ft_gpu_install.log 2>&1
cat /tmp/ft_gpu_install.log
# run from outside the tree: its fast_timesformer/ must not shadow the install
cd /tmp
exec $PY -m fast_timesformer.cli gpu-check --out "$OUT" --install-log /tmp/ft_gpu_install.log "$@"
