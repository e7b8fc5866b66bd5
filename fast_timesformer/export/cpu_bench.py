"""The CPU inference suite (``fast-timesformer bench --suite cpu-inference``): how fast can a deployed
TimeSformer classify one clip on a CPU, as ratios to Hugging Face eager float32 measured in the same run.

Rows, per clip size (ViT-B/16 divided, B=1, float32, ``threads`` threads for every row):

- ``hf eager``: ``TimesformerForVideoClassification`` with our weights copied in (the ratio's base);
- ``ours eager``: our TimeSformer, ``regular`` backend;
- ``ours compiled``: the same under ``torch.compile`` (inductor, with ``freezing``: weights folded as
  constants and pre-packed for the CPU GEMMs, the inference setting); its compile time is reported apart;
- ``ort ours``: ONNX Runtime (CPU provider, all graph optimisations) on our exported file
  (:func:`fast_timesformer.export.export_model`, dynamic batch, checked against eager when written);
- ``ort hf``: ONNX Runtime on Hugging Face's own model exported by the same exporter, where it exports
  (otherwise the row records the exporter's error).

Every row's logits are compared with Hugging Face's (``max_abs_diff``: same weights, float32, so all rows
compute the same function). Timing: one untimed call per row, then ``repeats`` rounds; each round calls every
row once, in an order rotated per round (so that a load change on a shared machine touches every row), and
the row's ratio is the median over rounds of ``hf time / row time`` within that round. The 1-minute load
average is recorded per round. Finally the leader (fastest row) is profiled once: ONNX Runtime's node
profile summed by op type, or torch.profiler's op table.

Optional ``--bf16`` rows: ours eager and ours compiled under CPU autocast to bfloat16, kept apart from the
float32 ratios, each with its top-1 agreement with float32 over ``agreement_clips`` random clips.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

SIZES = ((8, 224), (8, 448))


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def _hf_model(ours, frames: int, image_size: int):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    from ..models.timesformer_layouts import official_to_hf_key

    cfg = TimesformerConfig(image_size=image_size, patch_size=16, num_channels=3, num_frames=frames, hidden_size=768,
                            num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            attention_type="divided_space_time", num_labels=ours.num_classes)
    hf = TimesformerForVideoClassification(cfg).eval()
    hf.load_state_dict({official_to_hf_key(k): v for k, v in ours.state_dict().items()})  # strict: all 1:1
    return hf


def _ort_session(path: str, threads: int, profile_prefix: Optional[str] = None):
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


def _export_hf(hf, x, path: str) -> None:
    from . import _quiet_exporter

    with _quiet_exporter():
        program = torch.onnx.export(hf, (x,), dynamo=True, input_names=["pixel_values"], verbose=False)
    program.save(path)


def build_rows(frames: int, image_size: int, threads: int, workdir: str, bf16: bool = False) -> tuple:
    """``(rows, x, notes)``: rows maps a name to ``{"run": callable(x) -> logits, ...facts}`` or to
    ``{"error": reason}`` where it could not be built."""
    from ..models.registry import create_model
    from . import export_model

    torch.manual_seed(0)
    ours = create_model("timesformer_base_patch16_224", num_frames=frames, image_size=image_size).eval()
    with torch.no_grad():  # a random head and temporal_fc with spread (both are zero-initialised)
        for m in (ours.head,) + tuple(b.temporal_fc for b in ours.blocks):
            m.weight.normal_(0, 0.02)
    x = torch.randn(1, frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    rows, notes = {}, []
    hf = _hf_model(ours, frames, image_size)
    rows["hf eager"] = {"run": lambda v: hf(pixel_values=v).logits}
    rows["ours eager"] = {"run": ours}

    t = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(ours)
        with torch.no_grad():
            compiled(x)
        rows["ours compiled"] = {"run": compiled, "compile_s": round(time.perf_counter() - t, 1),
                                 "settings": "torch.compile (inductor), freezing=True"}
    except Exception as e:  # noqa: BLE001 - recorded as the row's reason
        rows["ours compiled"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}

    path = os.path.join(workdir, f"ours_{frames}x{image_size}.onnx")
    t = time.perf_counter()
    try:
        export_model(ours, path, format="onnx", check_batches=())  # measure() compares every row with HF
        rows["ort ours"] = {"run": _ort_runner(_ort_session(path, threads)), "path": path,
                            "export_s": round(time.perf_counter() - t, 1)}
    except Exception as e:  # noqa: BLE001
        rows["ort ours"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}

    path = os.path.join(workdir, f"hf_{frames}x{image_size}.onnx")
    t = time.perf_counter()
    try:
        with torch.no_grad():
            _export_hf(hf, x, path)
        rows["ort hf"] = {"run": _ort_runner(_ort_session(path, threads)), "path": path,
                          "export_s": round(time.perf_counter() - t, 1)}
    except Exception as e:  # noqa: BLE001
        rows["ort hf"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}

    if bf16:
        def autocast(fn):
            def run(v):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn(v)
            return run

        rows["ours eager bf16"] = {"run": autocast(ours), "bf16": True}
    return rows, x, notes


def measure(rows: dict, x, repeats: int, *, warmup: bool = True, partial: Optional[Callable] = None) -> dict:
    """``warmup``: an untimed first call per row (the compiled row had its first call when built); then
    ``repeats`` rotated rounds. Every row's logits (from the first call) are compared with hf eager's.
    Returns per-row results (ratios to hf eager); ``partial(result)`` is called after each round."""
    live = [n for n, r in rows.items() if "run" in r]
    base = "hf eager"
    out = {n: {"times_s": [], "ratios": []} for n in live}
    logits = {}

    def compare():
        ref = logits[base]
        for n in live:
            out[n]["max_abs_diff_vs_hf"] = float((logits[n] - ref).abs().max())
            out[n]["top1_equal_hf"] = bool(logits[n].argmax(-1).eq(ref.argmax(-1)).all())

    if warmup:
        with torch.no_grad():
            logits.update({n: rows[n]["run"](x).float() for n in live})
        compare()
    loads = []
    result = {"rows": out, "load_1min": loads, "warmup_call": warmup}
    for r in range(repeats):
        order = live[r % len(live):] + live[: r % len(live)]
        loads.append(_load())
        times = {}
        for n in order:
            with torch.no_grad():
                t = time.perf_counter()
                y = rows[n]["run"](x)
                times[n] = time.perf_counter() - t
            logits.setdefault(n, y.float())
        if r == 0 and not warmup:
            compare()
        _say(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n]:.2f} s" for n in live) + f" (load {loads[-1]})")
        for n in live:
            out[n]["times_s"].append(round(times[n], 4))
            out[n]["ratios"].append(round(times[base] / times[n], 4))
            out[n]["median_s"] = round(statistics.median(out[n]["times_s"]), 4)
            out[n]["ratio_to_hf"] = round(statistics.median(out[n]["ratios"]), 3)
        result["rounds_done"] = r + 1
        if partial is not None:
            partial(result)
    for n, r in rows.items():
        if "error" in r:
            out[n] = {"error": r["error"]}
        else:
            out[n].update({k: v for k, v in r.items() if k not in ("run", "path")})
    return result


def profile_leader(rows: dict, results: dict, x, workdir: str, threads: int, top: int = 15) -> dict:
    """One profiled call of the fastest float32 row: where its time goes, by op."""
    cand = [(r["median_s"], n) for n, r in results["rows"].items() if "median_s" in r and not r.get("bf16")]
    _, leader = min(cand)
    if leader.startswith("ort"):
        sess = _ort_session(rows[leader]["path"], threads, profile_prefix=os.path.join(workdir, "ort_profile"))
        _ort_runner(sess)(x)
        _ort_runner(sess)(x)
        prof = sess.end_profiling()
        events = json.load(open(prof))
        runs = [e for e in events if e.get("name") == "model_run"]
        last_start = runs[-1]["ts"] if runs else 0
        by_op: dict = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= last_start:
                op = e.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0) + e["dur"]
        total = sum(by_op.values()) or 1
        table = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
        return {"leader": leader, "tool": "onnxruntime profiling (second run)", "total_ms": round(total / 1e3, 1),
                "ops": [{"op": k, "ms": round(v / 1e3, 1), "share": round(v / total, 3)} for k, v in table]}
    from torch.profiler import ProfilerActivity, profile

    fn = rows[leader]["run"]
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as p:
        fn(x)
    avg = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in p.key_averages()) or 1
    return {"leader": leader, "tool": "torch.profiler (self CPU time)", "total_ms": round(total / 1e3, 1),
            "ops": [{"op": e.key, "ms": round(e.self_cpu_time_total / 1e3, 1),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in avg]}


def bf16_agreement(rows: dict, frames: int, image_size: int, clips: int) -> dict:
    """Top-1 agreement of each bf16 row with ours float32 over ``clips`` random clips."""
    out = {}
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(1, frames, 3, image_size, image_size, generator=g) for _ in range(clips)]
    with torch.no_grad():
        ref = [rows["ours eager"]["run"](v).argmax(-1) for v in xs]
        for n, r in rows.items():
            if r.get("bf16") and "run" in r:
                out[n] = sum(bool(r["run"](v).argmax(-1).eq(t).all()) for v, t in zip(xs, ref)) / clips
    return out


def _say(msg: str) -> None:
    import sys

    print(f"[cpu-inference {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_suite(out_dir: str, *, sizes=SIZES, threads: int = 2, repeats=3, warmup=True, bf16: bool = False,
              agreement_clips: int = 8) -> dict:
    """Measure every row at every size; write ``results.json`` and ``results.md`` into ``out_dir`` (sizes an
    earlier run recorded there are kept). ``repeats``, ``warmup``: per size (an int / bool, or one per size:
    8x448 calls are 10x as long)."""
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"suite": "cpu-inference", "threads": threads, "batch": 1, "dtype": "float32",
              "model": "ViT-B/16 divided_space_time, depth 12, 400 classes, regular backend",
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "torch": torch.__version__, "onnxruntime": _version("onnxruntime"),
                          "transformers": _version("transformers")},
              "load_1min_start": _load(), "sizes": {}}
    earlier = out_dir / "results.json"
    if earlier.exists():
        record["sizes"] = json.loads(earlier.read_text()).get("sizes", {})
    with tempfile.TemporaryDirectory() as work:
        reps = [repeats] * len(sizes) if isinstance(repeats, int) else list(repeats)
        warm = [warmup] * len(sizes) if isinstance(warmup, bool) else list(warmup)
        for (frames, size), rep, wu in zip(sizes, reps, warm):
            key = f"{frames}x{size}"
            _say(f"{key}: building the rows (compile, exports)")
            rows, x, notes = build_rows(frames, size, threads, work, bf16=bf16)
            _say(f"{key}: built; timing {rep} rounds")
            def save(partial, key=key, rep=rep):
                record["sizes"][key] = {**partial, "repeats": rep, "complete": False}
                (out_dir / "results.json").write_text(json.dumps(record, indent=1, default=str))

            res = measure(rows, x, rep, warmup=wu, partial=save)
            res["repeats"], res["complete"] = rep, True
            res["profile"] = profile_leader(rows, res, x, work, threads)
            if bf16:
                res["bf16_top1_agreement"] = bf16_agreement(rows, frames, size, agreement_clips)
            record["sizes"][key] = res
            (out_dir / "results.json").write_text(json.dumps(record, indent=1))
            del rows
    record["load_1min_end"] = _load()
    (out_dir / "results.json").write_text(json.dumps(record, indent=1))
    (out_dir / "results.md").write_text(markdown(record))
    return record


def markdown(record: dict) -> str:
    lines = ["| row | " + " | ".join(record["sizes"]) + " |", "|---|" + "---|" * len(record["sizes"])]
    names = list(dict.fromkeys(n for s in record["sizes"].values() for n in s["rows"]))
    for n in names:
        cells = []
        for s in record["sizes"].values():
            r = s["rows"].get(n, {})
            cells.append(f"{r['ratio_to_hf']:.2f}x ({r['median_s']:.2f} s)" if "ratio_to_hf" in r
                         else f"not measured: {r.get('error', '-')}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":  # python -m fast_timesformer.export.cpu_bench OUT_DIR [FxS:REPEATS ...] [--bf16]
    import sys

    args = sys.argv[1:]
    bf16 = "--bf16" in args
    args = [a for a in args if a != "--bf16"]
    points = [a.split(":") for a in args[1:]] or [[f"{f}x{s}", "3"] for f, s in SIZES]
    sizes = tuple(tuple(int(v) for v in p[0].split("x")) for p in points)
    # FxS:R rounds after an untimed call per row; FxS:Rn without it (the first round's logits are compared)
    rec = run_suite(args[0], sizes=sizes, bf16=bf16, repeats=[int(p[1].rstrip("n")) if len(p) > 1 else 3 for p in points],
                    warmup=[not (len(p) > 1 and p[1].endswith("n")) for p in points])
    print(markdown(rec))
