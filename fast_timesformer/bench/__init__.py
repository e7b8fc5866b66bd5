"""Benchmark harness: one suite registry, one runner, one record schema, plots and summary drawn from records.

Command line: ``fast-timesformer bench --suite NAME`` (every registered suite: ``--help`` lists them),
``fast-timesformer plot --results DIR`` and ``fast-timesformer gpu-check --out DIR`` (a GPU loan in one call;
``--dry-run`` on CPU). A new suite: :func:`~fast_timesformer.bench.suites.register_suite`. See ``docs/bench.md``
and ``docs/gpu.md``.
"""
from . import kernels, studies  # noqa: F401,E402  (they register their suites)
from .runner import Case, load_results, measure_point, run_sweep  # noqa: F401
from .suites import SUITES, filter_points, get_suite, register_suite, suite_points  # noqa: F401
from .workloads import Skip, Workload, build  # noqa: F401
