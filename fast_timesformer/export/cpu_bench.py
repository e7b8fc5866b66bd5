"""The CPU inference suite, ``fast-timesformer bench --suite cpu-inference``: how fast a deployed TimeSformer
classifies one clip on a CPU, as ratios to Hugging Face eager float32 measured in the same run.

Rows, per clip size (ViT-B/16 divided, B=1, the run's ``--threads`` for every row; ``--tiny``: dim 32, depth 1,
2x32 clips, seconds), each a record of group ``float32`` or ``bf16``:

- ``hf eager``: ``TimesformerForVideoClassification`` with our weights copied in (every ratio's base);
- ``ours eager``: our TimeSformer, ``regular`` backend;
- ``ours compiled``: the same under ``torch.compile`` (inductor with ``freezing``: weights folded as constants
  and pre-packed for the CPU GEMMs, the inference setting); its compile time is reported apart (``compile_s``);
- ``ort ours``: ONNX Runtime (CPU provider, all graph optimisations) on our export
  (:func:`fast_timesformer.export.export_model`, dynamic batch); ``export_s`` apart;
- ``ort hf``: ONNX Runtime on Hugging Face's own model exported by the same exporter (the row records the
  exporter's error where it does not export);
- group ``bf16`` (``--groups float32`` leaves them out): ``ours eager bf16`` and ``ours compiled bf16``, CPU
  autocast to bfloat16, each with its top-1 agreement with ours float32 over ``agreement_clips`` random
  clips (``top1_agreement_fp32``); never the leader, never in the float32 table.

Every row's logits are compared with Hugging Face's (``max_abs_diff_vs_hf``, ``top1_equal_hf``: same weights,
float32, so the float32 rows compute the same function). The rows of one size are measured together
(``Case.together``): built, then one untimed call each (``first_call``; without it the first round's logits are
compared), then ``rounds`` rounds, each calling every row once in an order rotated per round, so that a load
change on a shared machine touches every row. ``ratio_to_hf``: the median over rounds of HF's time / the row's
time in the same round (``round_ratios``, ``round_times_s``, ``round_load_1min``); ``hf eager`` is built and
timed even when a filter leaves its record out. The fastest float32 row (highest ``ratio_to_hf``: a load
drift between rounds moves the medians, not the per-round ratios) is then profiled once, on its record
(``profile``, ``leader``): ONNX Runtime's node profile by op type, or torch.profiler's op table.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..bench import measure
from ..bench.runner import Case
from ..bench.suites import register_suite
from ..bench.workloads import Workload, build, copy_ours_into_hf
from ..environment import load_average
from ..errors import first_line

BASE = dict(patch_size=16, dim=768, depth=12, heads=12, num_classes=400)
TINY = dict(patch_size=16, dim=32, depth=1, heads=2, num_classes=5)
#: (frames, image size, rounds, an untimed first call per row); 8x448 calls take ~4x as long: 2 rounds, the
#: compiled rows warmed by their compile and the others' logits compared in the first round
SIZES = ((8, 224, 3, True), (8, 448, 2, False))
TINY_SIZES = ((2, 32, 3, True),)
AGREEMENT_CLIPS = 8


@dataclass(frozen=True)
class Row:
    name: str
    impl: str  # whose model: ours or hf
    runtime: str  # eager, torch.compile, onnxruntime
    dtype: str = "float32"
    settings: str = ""


COMPILE = {"freezing": True}
ROWS = (
    Row("hf eager", "hf", "eager"),
    Row("ours eager", "ours", "eager"),
    Row("ours compiled", "ours", "torch.compile", settings=f"inductor, options {COMPILE}"),
    Row("ort ours", "ours", "onnxruntime", settings="ORT_ENABLE_ALL"),
    Row("ort hf", "hf", "onnxruntime", settings="ORT_ENABLE_ALL"),
    Row("ours eager bf16", "ours", "eager", "bfloat16", "torch.autocast('cpu', bfloat16)"),
    Row("ours compiled bf16", "ours", "torch.compile", "bfloat16",
        f"inductor, options {COMPILE}, under torch.autocast('cpu', bfloat16)"),
)
BASE_ROW = ROWS[0].name


@register_suite("cpu-inference", help="deployed CPU inference, ViT-B B=1 at 8x224 and 8x448: ours eager, "
                                      "torch.compile, ONNX Runtime on our export and on HF's, as ratios to HF eager "
                                      "float32 in the same rotated rounds; bf16 rows apart (group bf16)")
def cpu_inference_suite(device="cpu", tiny=False):
    if device.split(":")[0] != "cpu":
        raise ValueError(f"the cpu-inference suite runs on the CPU, not --device {device}")
    cases = []
    for frames, size, rounds, first_call in TINY_SIZES if tiny else SIZES:
        for row in ROWS:
            ours = {"backend": "regular"} if row.impl == "ours" else {}
            cases.append(Case("float32" if row.dtype == "float32" else "bf16", f"{frames}x{size} {row.name}",
                              measure_size, together=f"cpu-inference {frames}x{size}", row=row.name, impl=row.impl,
                              runtime=row.runtime, dtype=row.dtype, mode="fwd", batch=1, frames=frames,
                              image_size=size, rounds=rounds, first_call=first_call, agreement_clips=AGREEMENT_CLIPS,
                              **ours, **(TINY if tiny else BASE)))
    return cases


# ---- the rows -------------------------------------------------------------------------------------------
@dataclass
class _Models:
    ours: torch.nn.Module
    hf: torch.nn.Module
    x: torch.Tensor
    work: str
    threads: int


def _models(c: Case, work: str) -> _Models:
    """Ours (random weights, the zero-initialised head and temporal_fc given spread so that logits differ)
    and Hugging Face's model with the same weights, and the clip."""
    w = Workload(impl="ours", frames=c.frames, image_size=c.image_size, patch_size=c.patch_size, dim=c.dim,
                 depth=c.depth, heads=c.heads, num_classes=c.num_classes)
    ours = build(w).model.eval()
    with torch.no_grad():
        for m in (ours.head,) + tuple(b.temporal_fc for b in ours.blocks):
            m.weight.normal_(0, 0.02)
    hf = build(w.replace(impl="hf")).model.eval()
    copy_ours_into_hf(ours, hf)  # strict: raises naming any tensor without its counterpart
    x = torch.randn(1, c.frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(1))
    return _Models(ours, hf, x, work, torch.get_num_threads())


def _autocast(fn: Callable) -> Callable:
    def run(v):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(v)
    return run


def _ort_session(path: str, threads: int, profile_prefix: str = ""):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _ort_runner(sess) -> Callable:
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return lambda x: torch.from_numpy(sess.run([out], {name: x.numpy()})[0])


def _export(m: _Models, impl: str) -> tuple:
    """(path, seconds) of the ONNX export of ours (:func:`export_model`) or of HF's model (the same exporter)."""
    from . import _quiet_exporter, export_model

    path = os.path.join(m.work, f"{impl}.onnx")
    t = time.perf_counter()
    if impl == "ours":
        export_model(m.ours, path, format="onnx", check_batches=())  # every row is compared with HF below
    else:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(m.hf, (m.x,), dynamo=True, input_names=["pixel_values"], verbose=False).save(path)
    return path, time.perf_counter() - t


def build_row(row: Row, m: _Models) -> dict:
    """``{"run": callable(x) -> logits, ...facts}`` of one row."""
    if row.runtime == "eager":
        fn = (lambda v: m.hf(pixel_values=v).logits) if row.impl == "hf" else m.ours
        return {"run": _autocast(fn) if row.dtype == "bfloat16" else fn}
    if row.runtime == "torch.compile":
        t = time.perf_counter()
        compiled = torch.compile(m.ours, options=COMPILE)
        fn = _autocast(compiled) if row.dtype == "bfloat16" else compiled
        with torch.no_grad():
            fn(m.x)  # the compile, untimed
        return {"run": fn, "compile_s": time.perf_counter() - t}
    path, seconds = _export(m, row.impl)
    return {"run": _ort_runner(_ort_session(path, m.threads)), "path": path, "export_s": seconds}


# ---- measuring the rows of one size together ------------------------------------------------------------
def rotated_rounds(rows: dict, x, rounds: int, first_call: bool, log: Callable = print) -> dict:
    """Time every row of ``rows`` (name -> built row, :data:`BASE_ROW` among them) once per round, the order
    rotated per round; ``first_call``: an untimed call per row before. Returns per-row figures; every row's
    logits (from its first call) are compared with the base row's."""
    names = list(rows)
    times = {n: [] for n in names}
    logits, loads = {}, []
    if first_call:
        with torch.no_grad():
            logits.update({n: rows[n]["run"](x).float() for n in names})
    for r in range(rounds):
        loads.append((load_average() or [None])[0])
        for n in names[r % len(names):] + names[: r % len(names)]:
            with torch.no_grad():
                t = time.perf_counter()
                y = rows[n]["run"](x)
                times[n].append(time.perf_counter() - t)
            logits.setdefault(n, y.float())
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3g} s" for n in names)
            + f" (load {loads[-1]})")
    ref = logits[BASE_ROW]
    method = (f"time.perf_counter per call, {rounds} rounds, each calling the {len(names)} rows of the size in "
              f"an order rotated per round")
    out = {}
    for n in names:
        ratios = [b / t for b, t in zip(times[BASE_ROW], times[n])]
        out[n] = {**measure.summarize(times[n], method), "round_times_s": times[n], "round_ratios": ratios,
                  "ratio_to_hf": statistics.median(ratios), "round_load_1min": loads, "first_call": first_call,
                  "max_abs_diff_vs_hf": float((logits[n] - ref).abs().max()),
                  "top1_equal_hf": bool(logits[n].argmax(-1).eq(ref.argmax(-1)).all())}
    return out


def profile_row(name: str, row: dict, x, m: _Models, top: int = 15) -> dict:
    """One profiled call of a row: where its time goes, by op."""
    if "path" in row:  # ONNX Runtime: its node profile of a second run, by op type
        sess = _ort_session(row["path"], m.threads, profile_prefix=os.path.join(m.work, "ort_profile"))
        _ort_runner(sess)(x)
        _ort_runner(sess)(x)
        with open(sess.end_profiling()) as fh:
            events = json.load(fh)
        runs = [e for e in events if e.get("name") == "model_run"]
        last_start = runs[-1]["ts"] if runs else 0
        by_op: dict = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= last_start:
                op = e.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0) + e["dur"] / 1e6
        tool = "onnxruntime profiling (second run), kernel time by op type"
    else:
        from torch.profiler import ProfilerActivity, profile

        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as p:
            row["run"](x)
        by_op = {e.key: e.self_cpu_time_total / 1e6 for e in p.key_averages()}
        tool = "torch.profiler, self CPU time by op"
    total = sum(by_op.values()) or 1.0
    table = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {"row": name, "tool": tool, "total_s": total,
            "ops": [{"op": k, "s": v, "share": v / total} for k, v in table]}


def top1_agreement(fns: dict, m: _Models, clips: int) -> dict:
    """Per row of ``fns`` (name -> callable): the fraction of ``clips`` random clips on which it ranks first
    the class ours float32 does."""
    g = torch.Generator().manual_seed(2)
    same = dict.fromkeys(fns, 0)
    with torch.no_grad():
        for _ in range(clips):
            v = torch.randn(m.x.shape, generator=g)
            ref = m.ours(v).argmax(-1)
            for n, fn in fns.items():
                same[n] += bool(fn(v).argmax(-1).eq(ref).all())
    return {n: k / clips for n, k in same.items()}


def measure_size(cases: list, log: Callable = None) -> list:
    """The figures of ``cases`` (rows of one clip size): build the rows, time them in rotated rounds with
    :data:`BASE_ROW`, profile the fastest float32 row, the bf16 rows' agreement. A row that cannot be built
    (an export that fails) is its record's ``error``, the others are measured."""
    c0 = cases[0]
    log = log or (lambda msg: print(f"[cpu-inference {c0.frames}x{c0.image_size} {time.strftime('%H:%M:%S')}] "
                                    f"{msg}", file=sys.stderr, flush=True))
    by_name = {r.name: r for r in ROWS}
    wanted = list(dict.fromkeys([BASE_ROW] + [c.row for c in cases]))
    with tempfile.TemporaryDirectory() as work:
        m = _models(c0, work)
        rows, failed = {}, {}
        for n in wanted:
            log(f"building {n}")
            try:
                rows[n] = build_row(by_name[n], m)
            except Exception as e:  # noqa: BLE001 - recorded as the row's error; the other rows go on
                failed[n] = first_line(e)[:300]
        if BASE_ROW in failed:
            raise RuntimeError(f"{BASE_ROW} (every ratio's base) failed: {failed[BASE_ROW]}")
        figures = rotated_rounds(rows, m.x, c0.rounds, c0.first_call, log)
        fp32 = [n for n in rows if by_name[n].dtype == "float32"]
        leader = max(fp32, key=lambda n: figures[n]["ratio_to_hf"])  # the per-round figure, robust to load drift
        figures[leader]["profile"] = profile_row(leader, rows[leader], m.x, m)
        low = {n: rows[n]["run"] for n in rows if by_name[n].dtype != "float32"}
        if low:
            log(f"top-1 agreement of {', '.join(low)} with float32 over {c0.agreement_clips} clips")
            for n, a in top1_agreement(low, m, c0.agreement_clips).items():
                figures[n].update(top1_agreement_fp32=a)
        for n in rows:
            facts = {k: v for k, v in rows[n].items() if k in ("compile_s", "export_s")}
            figures[n].update(facts, settings=by_name[n].settings, leader=n == leader)
    return [figures[c.row] if c.row in figures else {"status": "error", "reason": failed[c.row]} for c in cases]
