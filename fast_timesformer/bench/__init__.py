"""Benchmark harness: sweeps over scheme x backend x frames x resolution, results, plots."""
