"""Count GEMM calls and bytes copied in one training step, ours vs Hugging Face (no timing).

    .venv/bin/python benchmarks/count_ops.py                      # ViT-B depth 12, 8x224 (about a minute)
    .venv/bin/python benchmarks/count_ops.py --image-size 448 --json counts_448.json

The counting lives in :mod:`fast_timesformer.bench.counts` (tests/test_counts.py checks a small model).
"""
from fast_timesformer.bench.counts import main

if __name__ == "__main__":
    raise SystemExit(main())
