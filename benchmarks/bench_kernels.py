"""Kernel benchmark (divided attention: temporal, spatial and joint steps vs every exact backend, the
roofline, a whole layer). The code lives in the installed package, :mod:`fast_timesformer.bench.kernels`,
so ``fast-timesformer gpu-check`` and ``fast-timesformer bench --suite kernels`` use it too; this file
keeps the old command working:

    python benchmarks/bench_kernels.py --device cuda     # -> benchmarks/results/<gpu>/bench_kernels.json
    python benchmarks/bench_kernels.py                   # CPU: tiny size, no triton timing
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fast_timesformer.bench.kernels import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
