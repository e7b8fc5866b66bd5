"""What a run ran on, for the records of every benchmark suite (``meta.json``, :func:`run_metadata`): the device
and CPU, how busy the machine was, package versions, the git commit and a fingerprint of the sources, the GPU
and nvidia-smi's clocks."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import torch

__all__ = ["run_metadata", "source_fingerprint", "load_average", "busy_cores", "cpu_name"]


def _version(dist: str) -> Optional[str]:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """1/5/15-minute load average: other processes on the machine skew CPU timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def busy_cores(seconds: float = 1.0):
    """How many cores other processes keep busy, sampled from /proc/stat while this one sleeps (Linux);
    the 1-minute load average otherwise (it lags: a run that just ended still counts)."""
    def sample():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
        return (os.cpu_count() or 1) * (1 - (i1 - i0) / (t1 - t0)) if t1 > t0 else None
    except (OSError, ValueError, IndexError):
        return (load_average() or [None])[0]


def _output(cmd: list, timeout: float, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = _output(["git", "rev-parse", "HEAD"], 10, root).stdout.strip()
        dirty = _output(["git", "status", "--porcelain", "--untracked-files=no"], 10, root).stdout.strip()
        return {"commit": sha or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def source_fingerprint(pkg_dir: Optional[Path] = None) -> str:
    """sha256 over the package's Python sources (path inside the package + content), the same for a source tree
    and an install: which code ran where a copy of the tree has no .git."""
    pkg_dir = Path(pkg_dir or Path(__file__).resolve().parent)
    h = hashlib.sha256()
    for p in sorted(pkg_dir.rglob("*.py")):
        h.update(("fast_timesformer/" + p.relative_to(pkg_dir).as_posix()).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _nvidia_smi() -> dict:
    """Clocks, power, temperature and memory of the GPUs, as nvidia-smi reports them (driver included)."""
    query = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,"
             "temperature.gpu,memory.total,memory.used")
    try:
        res = _output(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], 20)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode or len(lines) < 2:
        return {"error": " ".join((res.stderr or res.stdout).split())[:300]}
    keys = [k.strip() for k in lines[0].split(",")]
    return {"gpus": [dict(zip(keys, (v.strip() for v in ln.split(",")))) for ln in lines[1:]]}


def run_metadata(settings: Optional[dict] = None) -> dict:
    """The one metadata block of a run (every suite, every gpu-check stage): device, versions, commit, load."""
    cuda = torch.cuda.is_available()
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu: {cpu_name()}",
        "cpu": cpu_name(), "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg_start": load_average(), "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {m: _version(m) for m in ("torch", "triton", "xformers", "transformers", "timesformer-pytorch",
                                              "performer-pytorch", "fast_timesformer")},
        "git": _git_commit(), "source_fingerprint": source_fingerprint(), "argv": sys.argv,
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES") if k in os.environ},
        "settings": settings or {},
    }
    if cuda:
        p = torch.cuda.get_device_properties(0)
        meta["gpu"] = {"capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                       "memory_GiB": round(p.total_memory / 2 ** 30, 1), "nvidia_smi": _nvidia_smi()}
    return meta
