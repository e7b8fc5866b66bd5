"""Compile every Triton kernel configuration for NVIDIA GPUs *without a GPU* and report what ptxas says.

For the launch plans the kernels use (packed and flash tilings, head dims 16..128, fp32 / fp16 / bf16)
each kernel is compiled ahead of time for sm_80 (A100) and sm_90 (H100): Triton -> PTX -> cubin, then
``ptxas -v`` gives registers per thread, spill bytes and shared memory. This catches compile errors
that Triton's CPU interpreter cannot (it never lowers to PTX) and register spills of too-large tiles.

    python benchmarks/compile_check.py [--arch 90] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not for the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fast_timesformer.kernels import divided_attention as K  # noqa: E402

POINTERS = {"Q", "K", "V", "PK", "PV", "O", "DO", "DQ", "DK", "DV"}
FP32_POINTERS = {"LSE", "DELTA", "DPK", "DPV"}
FLOATS = {"qk_scale", "sm_scale"}
DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def compile_one(fn, dtype, consts, arch, num_warps, num_stages):
    sig = {}
    for p in fn.params:
        n = p.name
        sig[n] = ("constexpr" if p.is_constexpr else "*fp32" if n in FP32_POINTERS else
                  f"*{dtype}" if n in POINTERS else "fp32" if n in FLOATS else "i32")
    src = ASTSource(fn=fn, signature=sig, constexprs={k: v for k, v in consts.items() if k in sig})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def ptxas_info(ptx: str, arch: int) -> dict:
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    # triton 3.9 emits PTX newer than its plain ptxas reads; its ptxas-blackwell (newer) reads it
    ptxas = next((bindir / n for n in ("ptxas-blackwell", "ptxas") if (bindir / n).exists()), "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        res = subprocess.run([str(ptxas), f"-arch=sm_{arch}{'a' if arch == 90 else ''}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    text = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    if not regs:
        return {"registers": None, "spill_bytes": None, "ptxas": text.strip().splitlines()[-1][:120] if text else ""}
    return {"registers": int(regs.group(1)), "spill_bytes": int(spill.group(1)) if spill else 0}


def cases(dtype: str):
    """(label, kernel, constexprs, plan) for the plans of typical shapes."""
    shapes = [("time T=8", 196, 8, 8, 0), ("space N=196", 8, 196, 196, 1), ("cls-query per frame", 8, 1, 196, 1),
              ("time T=32", 196, 32, 32, 0), ("space N=1024", 8, 1024, 1024, 1)]
    for d in (16, 40, 64, 128):
        for label, G, SQ, SK, P in shapes:
            pl = K._plan(G, SQ, SK, P, d, fp32_gpu=dtype == "fp32")
            base = dict(BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, BLOCK_P=pl.block_p, BLOCK_D=pl.block_d)
            name = f"{label} d={d}"
            yield name, K._fwd_kernel, dict(base, PACKED=pl.packed, HAS_PREFIX=P > 0, STORE_LSE=True), pl, pl.num_stages
            if pl.packed:
                yield name, K._bwd_packed_kernel, dict(base, HAS_PREFIX=P > 0), pl, 1
            else:
                yield name, K._bwd_delta_kernel, dict(BLOCK_M=pl.block_m, BLOCK_D=pl.block_d), pl, 1
                yield name, K._bwd_dkdv_kernel, dict(base), pl, 1
                yield name, K._bwd_dq_kernel, dict(base, HAS_PREFIX=P > 0), pl, 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=list(DTYPES))
    p.add_argument("--cases", nargs="+", default=None,
                   help="only the cases whose label contains one of these (e.g. 'time T=8 d=64')")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows, failures = [], 0
    for arch in args.arch:
        for dtype in args.dtypes:
            for label, fn, consts, pl, stages in cases(dtype):
                if args.cases and not any(c in label for c in args.cases):
                    continue
                consts = dict(consts, PREC="ieee" if dtype == "fp32" else None)
                warps = K._bwd_warps(pl) if fn is not K._fwd_kernel else pl.num_warps
                row = {"arch": arch, "dtype": dtype, "case": label, "kernel": fn.__name__, "warps": warps,
                       "tiles": f"{consts.get('BLOCK_M')}x{consts.get('BLOCK_N')}x{consts.get('BLOCK_D')}"}
                try:
                    k = compile_one(fn, dtype, consts, arch, warps, stages)
                    row.update(ptxas_info(k.asm["ptx"], arch), shared=k.metadata.shared, status="ok")
                except Exception as e:  # report, keep going
                    failures += 1
                    row.update(status=f"FAILED: {type(e).__name__}: {str(e).splitlines()[-1][:120]}")
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    print(f"{len(rows) - failures} compiled, {failures} failed; "
          f"{sum(1 for r in rows if r.get('spill_bytes'))} with register spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
