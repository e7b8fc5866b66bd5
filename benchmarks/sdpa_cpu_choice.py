"""CPU SDPA: flash vs math per sequence length, forward and forward+backward (median of 7 calls each,
flash timed before and after math, the faster kept), float32, 2 threads. The question of issue 15: is
SDPA's math path measurably faster than its CPU flash kernel at some sequence length (the temporal step's
8 frames, the spatial 197 / 785 tokens), so that `regular` should choose per length?

    .venv/bin/python benchmarks/sdpa_cpu_choice.py > benchmarks/results/sdpa_cpu/sdpa_cpu_choice.txt

Shapes are (batch*groups, heads, seq, dim_head) of ViT-B TimeSformer steps: time at 8x224 with B=8
(1568 sequences of 8 frames), time at 8x448 with B=1 (784 sequences), space at 8x224 and 8x448 (8
sequences of 197 / 785 tokens), time at 16 and 32 frames (196 sequences).
"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.set_num_threads(2)


def bench(shape, impl, train, reps=7):
    B, h, S, d = shape
    q, k, v = (torch.randn(B, h, S, d, requires_grad=train) for _ in range(3))
    g = torch.randn(B, h, S, d)

    def run():
        with sdpa_kernel([impl]):
            o = F.scaled_dot_product_attention(q, k, v)
            if train:
                o.backward(g)
    run()
    run()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


for shape in [(1568, 12, 8, 64), (784 * 8 // 8, 12, 8, 64), (8, 12, 197, 64), (8, 12, 785, 64), (196, 12, 16, 64), (196, 12, 32, 64)]:
    for train in (False, True):
        f = bench(shape, SDPBackend.FLASH_ATTENTION, train)
        m = bench(shape, SDPBackend.MATH, train)
        f2 = bench(shape, SDPBackend.FLASH_ATTENTION, train)
        print(shape, "fwd+bwd" if train else "fwd", f"flash {min(f,f2)*1e3:.1f} ms math {m*1e3:.1f} ms  math/flash {m/min(f,f2):.2f}", flush=True)
