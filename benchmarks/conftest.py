"""pytest-benchmark suites: ``pytest benchmarks --benchmark-only`` (not part of ``make test``).

Every model case builds a :class:`~fast_timesformer.bench.workloads.Workload` (the same builder as
``fast-timesformer bench``), is grouped by scheme and backend (``benchmark.group``), synchronises the
GPU after each call, and is skipped with the builder's reason where it cannot run here (a backend that
refuses the device, a missing peer package); ``test_bench_data.py`` times the training data instead. Results are saved as JSON under ``.benchmarks/`` (``--benchmark-save=fast_timesformer``)
unless ``--benchmark-json``/``--benchmark-save`` is given: compare runs with ``--benchmark-compare``.
CI runs the ``tiny`` cases: ``pytest benchmarks -k tiny --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch

from fast_timesformer.backends.registry import BackendUnavailable
from fast_timesformer.bench.workloads import Skip, build, scheme_label

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"


def pytest_configure(config):
    if DEVICE == "cpu":  # 1 thread when other processes already load the cores (see docs/bench.md)
        from fast_timesformer.bench.cli import choose_threads
        from fast_timesformer.bench.workloads import Workload

        choose_threads("auto", [Workload()])
    opt = config.option
    if getattr(opt, "benchmark_json", None) is None and not getattr(opt, "benchmark_save", None) \
            and hasattr(opt, "benchmark_save") and not getattr(opt, "benchmark_autosave", False):
        opt.benchmark_save = "fast_timesformer"


def pytest_terminal_summary(terminalreporter, config):
    # pytest-randomly prints its seed in the header, which -q (CI) hides: repeat it at the end
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.get_verbosity() < 0:
        terminalreporter.write_line(f"Using --randomly-seed={seed}")


@pytest.fixture
def run_workload(benchmark):
    """``run_workload(w)``: build ``w``, check it runs, then benchmark one step (GPU-synchronised)."""

    def run(w):
        try:
            built = build(w)
            built.step()  # warm-up, and backends refuse here with their reasons
        except (Skip, BackendUnavailable) as e:
            pytest.skip(str(e))
        benchmark.group = f"{scheme_label(w.scheme)} / {w.backend if w.impl in ('ours', 'attention') else w.impl}"
        benchmark.extra_info.update(w.to_dict())
        benchmark.extra_info["tokens"] = w.tokens
        benchmark.extra_info["threads"] = torch.get_num_threads()
        if w.device.startswith("cuda"):
            def step():
                built.step()
                torch.cuda.synchronize()
        else:
            step = built.step
        benchmark.pedantic(step, rounds=3 if w.device == "cpu" else 20, iterations=1, warmup_rounds=1)
        return built

    return run
