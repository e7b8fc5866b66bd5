"""Benchmark harness: workloads, suites, the sweep runner (JSONL results with resume), plots, summary.

Command line: ``fast-timesformer bench --suite cpu|gpu|models|hf-sizes|tiny|kernels``,
``fast-timesformer plot --results DIR`` and ``fast-timesformer gpu-check --out DIR`` (a GPU loan in one
call; ``--dry-run`` on CPU). See ``docs/bench.md`` and ``docs/gpu.md``.
"""
from .runner import load_results, measure_point, run_sweep  # noqa: F401
from .suites import filter_points, get_suite, list_suites  # noqa: F401
from .workloads import Skip, Workload, build  # noqa: F401
