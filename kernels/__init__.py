"""Triton kernels, installed as ``fast_timesformer.kernels`` (see setup.cfg's package_dir)."""
