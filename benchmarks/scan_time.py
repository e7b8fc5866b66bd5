"""What the folder scan costs: a clean scan of 1,000 small videos (two classes x 500; 16x16, 8 frames, mpeg4 .mp4).

Times, alternating, the layout rules alone (listing with links followed once, ``check_entries``:
``VideoFolder(check=False)``) and the whole scan run before training (the same plus ``check_video`` on
every file), ``--repeats`` times each, on one thread; writes ``--out`` (JSON) with the machine's load.

    python benchmarks/scan_time.py --videos /tmp/scan_videos --out benchmarks/results/scan/scan_1000.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import av
import torch

from fast_timesformer.train import data as D


def make_videos(root: str, per_class: int = 500) -> None:
    for k in range(2):
        os.makedirs(f"{root}/c{k}")
        for i in range(per_class):
            with av.open(f"{root}/c{k}/{i}.mp4", mode="w") as c:
                s = c.add_stream("mpeg4", rate=8)
                s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
                for t in range(8):
                    img = torch.full((16, 16, 3), (40 + 5 * t + i) % 250, dtype=torch.uint8).numpy()
                    for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--videos", required=True, help="folder of the 1,000 videos (written if missing)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not os.path.isdir(a.videos):
        make_videos(a.videos)
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"layout_s": [], "full_scan_s": []}
    for _ in range(a.repeats):
        t = time.perf_counter()
        D.VideoFolder(a.videos, check=False)
        times["layout_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ds = D.VideoFolder(a.videos)
        times["full_scan_s"].append(time.perf_counter() - t)
    assert len(ds) == 1000
    result = {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "all": [round(x, 3) for x in v]}
              for k, v in times.items()}
    result.update(files=len(ds), load_1min=os.getloadavg()[0], cpus=os.cpu_count(), python=platform.python_version(),
                  av=av.__version__, torch=torch.__version__,
                  note="shared 2-core machine: other work ran at the same time (see load_1min)")
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
