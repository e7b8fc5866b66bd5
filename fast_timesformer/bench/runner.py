"""The runner: measure points one by one, each record appended to ``results.jsonl`` as soon as it is done
(fsynced, all or nothing); one metadata block per run in ``meta.json`` (:func:`run_metadata`); ``resume`` skips
a suite's points already recorded as ok, failed, oom or skipped. The record schema: docs/bench.md."""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..attention import use_backend
from ..backends import AttentionCore, BackendUnavailable, list_backends
from ..environment import load_average, run_metadata
from ..errors import FastTimesformerError, first_line
from ..outputs import write_json
from . import measure
from .correctness import check_workload
from .workloads import Skip, Workload, build, registered_backend

RESULTS, META = "results.jsonl", "meta.json"
STATUSES = ("ok", "oom", "skipped", "failed", "error")
DONE = ("ok", "oom", "skipped", "failed")  # not retried by resume ("failed": over its declared tolerance)
#: what a non-exact backend's relative error against the exact baseline means, by its declared kind
ERROR_KINDS = {"approximate": "approximation error", "different_model": "deviation (different model)",
               "exact": "rounding difference"}


class ResultsWriteError(FastTimesformerError):
    """Appending to ``results.jsonl`` failed (disk full, read-only folder): the sweep stops, and the records
    saved before stay intact (``meta.json`` is written by :func:`~fast_timesformer.outputs.write_json`)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- metadata --------------------------------------------------------------------------------
def record_run(out_dir, settings: Optional[dict] = None, **extra) -> tuple:
    """(meta, run): this run's metadata block (its ``run_id``) appended to ``out_dir/meta.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = load_meta(out_dir)
    run = dict(run_metadata(settings), run_id=len(meta["runs"]), **extra)
    meta["runs"].append(run)
    write_json(out_dir / META, meta, indent=2, default=str)  # atomic: a failure keeps the old one
    return meta, run


# ---- one point -------------------------------------------------------------------------------
class Case:
    """A point measured by a suite's own function rather than built from a :class:`Workload` (a kernel step,
    a fresh-process memory figure, ...): ``fields`` is its workload (plain JSON data; filters read it like a
    Workload's attributes), ``fn(case) -> dict`` its figures (raise :class:`Skip` for a refusal). ``together``: a
    key (not part of the workload) of cases measured in one call, timed against each other (:func:`measure_cases`)."""

    interleave = 0

    def __init__(self, group: str, label: str, fn: Callable, *, device: str = "cpu", together=None, **fields):
        self.group, self.label, self.fn, self.device, self.together = group, label, fn, device, together
        self.fields, self.tokens = dict(fields, group=group, device=device), fields.get("tokens", 0)

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return dict(self.fields)

    @property
    def key(self) -> str:
        return json.dumps(self.fields, sort_keys=True, separators=(",", ":"), default=str)


def _new_record(p) -> dict:
    """A point's record; ``backend_kind``: its backend's declared kind (what the plots style it by, also where
    the results are read in a process that does not register it)."""
    ours = getattr(p, "impl", "attention") in ("attention", "ours")
    be = registered_backend(getattr(p, "backend", "")) if ours else None
    return {"key": p.key, "workload": p.to_dict(), "label": p.label, "tokens": p.tokens, "status": "ok",
            "reason": "", "notes": [], "backend_kind": be.kind if be else None}


def _fail(rec: dict, e: BaseException) -> None:
    """Turn an exception into the record's status: skipped (refusal), oom, or error."""
    if isinstance(e, (Skip, BackendUnavailable)):
        rec.update(status="skipped", reason=str(e))
    elif measure.is_oom(e):
        rec.update(status="oom", reason=first_line(e)[:300])
    else:
        rec.update(status="error", reason=f"{type(e).__name__}: {e}"[:2000],
                   traceback=traceback.format_exc(limit=6)[-4000:])


def failed(err: dict) -> dict:
    """The figures of a point over its declared tolerance (never timed): its error, ``failed`` and why in one line."""
    worst = ", ".join(f"{k} {v:.2g}" for k, v in err["max_rel"].items())
    return {"error": err, "status": "failed",
            "reason": f"error vs {err['vs']} over the backend's declared tolerance (atol, rtol) = "
                      f"{tuple(err['tolerance'])}{' in step ' + repr(err['step']) if err.get('step') else ''}: "
                      f"max |err|/max |ref| {worst}; not timed"}


def _timed_call(step: Callable, device: str) -> float:
    measure.sync(device)
    start = time.perf_counter()
    step()
    measure.sync(device)
    return time.perf_counter() - start


def _first_call(w: Workload, built) -> dict:
    """A compiled backend's untimed first call (the compile; docs/bench.md): ``compile_s`` and ``mask_s`` as its
    attention cores recorded them (0 where an earlier point compiled the shapes), ``first_call_s`` its wall time."""
    cores = [m for m in built.model.modules() if isinstance(m, AttentionCore)]

    def spent():
        return sum(c.compile_seconds for c in cores), sum(getattr(c, "mask_seconds", 0.0) for c in cores)

    before, first = spent(), _timed_call(built.step, w.device)
    after = spent()
    return {"compile_s": after[0] - before[0], "first_call_s": first, "mask_s": after[1] - before[1]}


def _compiled_flops(w: Workload, be, built) -> dict:
    """FLOPs of a backend that cannot run under FlopCounterMode: counted on the same model with the backend its
    :class:`~fast_timesformer.backends.Compiled` declaration names swapped in, or ``not_measured`` says why not."""
    decl = be.compiled
    why = decl.flops_refusal(be, dict(w.backend_options))
    if why:
        return {"flops": None, "not_measured": {"flops": why}}
    try:
        with use_backend(built.model, decl.flops_backend):
            flops = measure.count_flops(built.step)
    except Exception as e:  # noqa: BLE001 - the point's own figures stand; its FLOPs say why they are missing
        return {"flops": None, "not_measured": {"flops": f"counting the FLOPs of {be.name!r} on "
                                                         f"{decl.flops_backend!r} failed: {first_line(e)[:300]}"}}
    method = (f"{measure.FLOPS_METHOD}, of the same model with backend {decl.flops_backend!r} swapped in: "
              f"{be.name!r} runs through torch.compile, which cannot run under the counter")
    return {"flops": flops, "flops_method": method + (f"; {decl.flops_why}" if decl.flops_why else "")}


def _prepare(w: Workload, builder) -> tuple:
    """(record, built or None): everything before the timing, in the order docs/bench.md gives (first call, float64
    check, FLOPs, peak memory); a point over its tolerance is ``failed`` (built None)."""
    rec = _new_record(w)
    be = registered_backend(w.backend) if w.impl in ("attention", "ours") else None
    compiled = be is not None and be.compiled is not None
    try:
        built = builder(w)
        rec.update(notes=list(built.notes), params=sum(p.numel() for p in built.model.parameters()))
        if compiled:
            rec.update(_first_call(w, built))
        if be is not None and be.exact:  # no speed without correctness: the error at this shape first
            rec["error"] = check_workload(w)
            if not rec["error"]["within"]:
                rec.update(failed(rec["error"]))
                return rec, None
        if compiled:
            rec.update(_compiled_flops(w, be, built))
        else:
            rec.update(flops=measure.count_flops(built.step), flops_method=measure.FLOPS_METHOD)
        measure.sync(w.device)
        rec.update(measure.peak_memory(built.step, w.device))
        return rec, built
    except Exception as e:  # noqa: BLE001 - a sweep records failures and goes on
        _fail(rec, e)
        return rec, None


def _finish(w: Workload, rec: dict, built, timing: Callable[[], dict]) -> None:
    """The point's latency (``timing()``), throughput, and its error against ``built.reference_backend``."""
    try:
        rec.update(timing())
        rec["throughput_clips_s"] = w.batch / rec["median_s"]
        rec["tflops_s"] = None if rec.get("flops") is None else rec["flops"] / rec["median_s"] / 1e12
        if built.reference_backend:
            out = built.output()
            with use_backend(built.model, built.reference_backend):
                ref = built.output()
            rec.update(rel_error=measure.relative_error(out, ref), reference_backend=built.reference_backend,
                       error_kind=ERROR_KINDS.get(rec.get("backend_kind"), "error"))
    except Exception as e:  # noqa: BLE001
        _fail(rec, e)


def measure_point(w: Workload, *, builder: Callable[[Workload], object] = None) -> dict:
    """Measure one workload; never raises for OOM, refusals or errors (they become the status)."""
    t0 = time.perf_counter()
    rec, built = _prepare(w, builder or build)
    if built is not None:
        _finish(w, rec, built, lambda: measure.time_step(built.step, w.device, min_run_time=w.min_run_time))
    if built is not None or rec["status"] != "skipped":
        del built
        measure.free_memory(w.device)
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def measure_cases(cases: list) -> list:
    """Run :class:`Case` s; never raises for refusals, OOM or errors (they become the status). One case: its
    ``fn(case)``. The cases of one ``together`` key (those still to measure, after filters and ``--resume``): one
    call ``fn(cases)`` returning one figures dict per case (it may set its case's ``status`` and ``reason``), a
    failure of the call every case's status, its wall time shared out."""
    t0 = time.perf_counter()
    recs = [_new_record(c) for c in cases]
    try:
        figures = list(cases[0].fn(cases)) if cases[0].together is not None else [cases[0].fn(cases[0])]
        if len(figures) != len(cases):
            raise RuntimeError(f"the suite returned {len(figures)} results for {len(cases)} cases")
        for rec, fig in zip(recs, figures):
            rec.update(fig)
    except Exception as e:  # noqa: BLE001 - a suite records failures and goes on
        for rec in recs:
            _fail(rec, e)
    if not cases[0].device.startswith("cpu"):
        measure.free_memory(cases[0].device)
    for rec in recs:
        rec["wall_s"] = (time.perf_counter() - t0) / len(cases)
    return recs


def measure_interleaved(ws: list, *, builder: Callable[[Workload], object] = None, rounds: int = 3) -> list:
    """Measure several workloads with their timed calls taken round-robin (A B C A B C ...): on a shared CPU,
    drifting load hits every implementation alike. Latency: the median of ``rounds`` single calls
    (``time.perf_counter``; a ``torch.utils.benchmark`` timer would add warm-up calls, seconds each here)."""
    t0 = time.perf_counter()
    prepared = [(w, *_prepare(w, builder or build)) for w in ws]
    times = [[] for _ in ws]
    for _ in range(rounds):
        for (w, rec, built), ts in zip(prepared, times):
            if built is not None and rec["status"] == "ok":
                try:
                    ts.append(_timed_call(built.step, w.device))
                except Exception as e:  # noqa: BLE001
                    _fail(rec, e)
    method = f"time.perf_counter per call, {rounds} rounds interleaved with {len(ws) - 1} other implementation(s)"
    for (w, rec, built), ts in zip(prepared, times):
        if rec["status"] == "ok" and ts:
            _finish(w, rec, built, lambda: measure.summarize(ts, method))  # called at once, in this iteration
        rec["wall_s"] = (time.perf_counter() - t0) / len(ws)
    records = [rec for _, rec, _ in prepared]
    del prepared, built
    measure.free_memory(ws[0].device)
    return records


# ---- results files ---------------------------------------------------------------------------
def load_results(out_dir) -> list:
    """Every record in ``out_dir/results.jsonl`` (a truncated last line, from a kill, is ignored)."""
    path = Path(out_dir) / RESULTS
    out = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def latest_by_key(records: Iterable[dict]) -> dict:
    """The last record written for each (suite, key) (a resumed run may retry an errored point)."""
    return {(r.get("suite"), r["key"]): r for r in records}


def _drop_partial_line(path: Path) -> None:
    """Cut the last line a run killed mid-write left without newline, in place (``truncate``: a rewrite on a full
    disk could lose the file)."""
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):
        try:
            os.truncate(path, data.rfind(b"\n") + 1)
        except OSError as e:
            raise ResultsWriteError(f"could not cut the partial last line of {path}: {e.strerror or e}") from e


def append_record(path: Path, rec: dict) -> None:
    """Append one JSON line to ``path`` and fsync it, all or nothing: if the write fails part-way (disk
    full), the file is cut back to its previous length and :class:`ResultsWriteError` is raised."""
    data = (json.dumps(rec, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise ResultsWriteError(f"could not append a result to {path}: {e.strerror or e}; the records "
                                    f"written before are intact (free space, then rerun with --resume)") from e
    finally:
        os.close(fd)


def load_meta(out_dir) -> dict:
    path = Path(out_dir) / META
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def _warm_up(todo, builder, seconds: float) -> None:
    """Run the first runnable point for a while before anything is timed: the first calls of a process pay for
    thread-pool start-up, allocator growth and lazy initialisation (seen as a 2-5x slower first point)."""
    for w in todo[:8]:
        try:
            built = builder(w)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                built.step()
            return
        except Exception:  # noqa: BLE001 - refusals and failures are recorded by the sweep itself
            continue


def run_sweep(points: Iterable[Workload], out_dir, *, resume: bool = False, progress: bool = True,
              settings: Optional[dict] = None, builder: Callable[[Workload], object] = None,
              log: Callable[[str], None] = print, warm_up_s: float = 2.0,
              deadline: Optional[float] = None) -> list:
    """Measure ``points`` in order, appending each record to ``out_dir/results.jsonl`` at once; returns the records
    of this call (resumed points: their stored record). Without ``resume`` an existing results file is replaced.
    Before timing, the first runnable point runs for ``warm_up_s``. ``deadline`` (``time.monotonic()``): no point
    starts after it; the points left out are missing from the returned list and the file (``resume`` measures them).
    """
    points, settings = list(points), settings or {}
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep has duplicate points")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    done = {}
    if resume:
        _drop_partial_line(results_path)
        done = {k: r for (suite, k), r in latest_by_key(load_results(out_dir)).items()
                if r.get("status") in DONE and suite == settings.get("suite")}
    else:
        results_path.open("w").close()  # start over (truncation needs no free space)
        (out_dir / META).unlink(missing_ok=True)
    meta, run = record_run(out_dir, settings, points=len(points), resumed=sum(k in done for k in keys))
    todo = [p for p in points if p.key not in done]
    if warm_up_s > 0 and any(isinstance(p, Workload) for p in todo):
        _warm_up([p for p in todo if isinstance(p, Workload)], builder or build, warm_up_s)
    if resume and done:
        log(f"resume: {len(points) - len(todo)} of {len(points)} points already in {results_path}")
    bar = None
    if progress and todo:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="pt", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            pass
    fresh = {}
    # what lives now (imports, registries, the warm-up) is never garbage: frozen, it is left out of the full
    # collection after each point, which then scans only what the point made (0.1-0.35 s a point otherwise)
    gc.collect()
    gc.freeze()
    try:
        for i, w in enumerate(todo):
            if w.key in fresh:
                continue
            if deadline is not None and time.monotonic() > deadline:
                log(f"time budget spent: {len(todo) - i} point(s) not measured")
                break
            if bar is not None:
                bar.set_description(w.label[:60])
            elif progress:
                log(f"[{i + 1}/{len(todo)}] {w.label}")
            if isinstance(w, Case):
                recs = measure_cases([w] if w.together is None else [
                    v for v in todo if isinstance(v, Case) and v.together == w.together and v.key not in fresh])
            elif w.interleave and w.device.startswith("cpu"):
                batch = [v for v in todo if v.interleave and v.key not in fresh and
                         (v.group, v.frames, v.image_size) == (w.group, w.frames, w.image_size)]
                recs = measure_interleaved(batch, builder=builder, rounds=w.interleave)
            else:
                recs = [measure_point(w, builder=builder)]
            for rec in recs:
                rec.update(suite=settings.get("suite"), group=rec["workload"].get("group"), run_id=run["run_id"],
                           measured_at=_now())
                append_record(results_path, rec)
                fresh[rec["key"]] = rec
                if bar is not None:
                    bar.update(1)
    finally:
        gc.unfreeze()
        if bar is not None:
            bar.close()
    run.update(finished=_now(), load_avg_end=load_average(),
               counts={s: sum(r["status"] == s for r in fresh.values()) for s in STATUSES})
    write_json(out_dir / META, meta, indent=2, default=str)  # atomic: a failure keeps the old one
    return [fresh.get(k) or done[k] for k in keys if k in fresh or k in done]


# ---- comparisons -------------------------------------------------------------------------------
SAME_CONFIG = ("scheme", "mode", "batch", "frames", "image_size", "patch_size", "dim", "depth", "heads", "dtype",
               "device", "group")


def kind_of(rec: dict) -> str:
    """A record's backend kind: stored with it, else the registry's (older results), else ``exact``."""
    return rec.get("backend_kind") or getattr(registered_backend(rec["workload"].get("backend")), "kind", "exact")


def baseline_backend(records: Iterable[dict]) -> Optional[str]:
    """The exact backend the others are compared with: the one the error measurements ran against
    (``reference_backend``), else the first exact backend, in registration order, with a measured point."""
    records = [r for r in records if r.get("status") == "ok" and r["workload"].get("impl") in ("attention", "ours")]
    for r in records:
        if r.get("reference_backend"):
            return r["reference_backend"]
    exact = {r["workload"].get("backend") for r in records if kind_of(r) == "exact"}
    order = list_backends()
    return min(exact, key=lambda b: (order.index(b) if b in order else len(order), b)) if exact else None


def peer_ratios(records: Iterable[dict]) -> list:
    """Speed and memory ratios at equal configs in one results file, for the ``target`` group and peers:
    every ``ours/<backend>`` against each peer (hf, lucidrains) and against ``ours/<baseline>``
    (:func:`baseline_backend`)."""
    records = [r for r in records if r.get("status") == "ok" and "scheme" in r["workload"] and r.get("median_s")]
    ours = [r for r in records if r["workload"].get("impl") == "ours"]
    base = baseline_backend([r for r in ours if r["workload"].get("group") == "target"])
    refs = [r for r in records if r["workload"].get("impl") in ("hf", "lucidrains")]
    refs += [r for r in ours if r["workload"].get("backend") == base and r["workload"].get("group") == "target"]
    out = []
    for ref in refs:
        pw = ref["workload"]
        peer = pw["impl"] if pw["impl"] != "ours" else f"ours/{base}"
        for o in ours:
            ow = o["workload"]
            if o is ref or not all(ow[f] == pw[f] for f in SAME_CONFIG):
                continue
            out.append({"group": pw["group"], "ours": ow["backend"], "peer": peer,
                        "ours_s": o["median_s"], "peer_s": ref["median_s"], "speedup": ref["median_s"] / o["median_s"],
                        "ours_mem": o.get("peak_mem_bytes"), "peer_mem": ref.get("peak_mem_bytes"),
                        "mem_ratio": (o["peak_mem_bytes"] / ref["peak_mem_bytes"]
                                      if o.get("peak_mem_bytes") and ref.get("peak_mem_bytes") else None),
                        "mode": ow["mode"], "config": f"b{ow['batch']} {ow['frames']}x{ow['image_size']} "
                                                      f"d{ow['dim']}x{ow['depth']} {ow['dtype']}"})
    return out
