"""Decode throughput of the training loader: clips per second per worker process.

One "clip" is what a DataLoader worker hands the trainer: 8 frames sampled uniformly from a 10-second,
30 fps, 340p video, resized (shorter side 256) and centre-cropped to 224, normalised
(``read_video`` + ``preprocess_clip``). The videos are made here (H.264 via libx264 in .mp4, as Kinetics
clips are; the content is moving noise and gradients, so the encoder has real work).

Measured in one process with one torch thread, as a DataLoader worker runs. Reported per decoder:
process CPU seconds per clip (what one worker costs on a core of its own, hardly changed by other
work on a shared machine) and wall seconds per clip (which a shared machine inflates). torchcodec is
tried as well: where it does not import, the reason is recorded instead of a number.

    python benchmarks/decode_speed.py --out benchmarks/results/decode
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from fast_timesformer.video import ClipTransform, preprocess_clip, read_video, sample_frame_indices


def make_video(path: str, *, seconds: int = 10, fps: int = 30, height: int = 340, width: int = 454,
               seed: int = 0) -> None:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(seconds * fps):
            shift = (4 * t) % width
            img = base[:, shift: shift + width].copy()  # texture panning right
            img[..., 0] = ((xx + 3 * t) % 256).astype(np.uint8)  # a moving gradient in red
            img[..., 1] = ((yy + 2 * t) % 256).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def pyav_clip(path: str, t: ClipTransform) -> torch.Tensor:
    return preprocess_clip(read_video(path, t.num_frames, "uniform"), t)


def torchcodec_clip(path: str, t: ClipTransform) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1)
    idx = sample_frame_indices(dec.metadata.num_frames, t.num_frames, "uniform")
    return preprocess_clip(dec.get_frames_at(idx).data, t)  # (f, 3, H, W) uint8


def torchcodec_status() -> str | None:
    """None if torchcodec imports here, else why not (one line)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as e:  # an ImportError, or an OSError from its shared libraries
        from fast_timesformer.errors import first_line

        cause = e.__cause__ or e.__context__
        return first_line(e) + (f" ({first_line(cause)})" if cause is not None else "")
    return None


def measure(fn, paths, t, rounds: int) -> dict:
    cpu, wall = [], []
    for _ in range(rounds):
        for p in paths:
            c0, w0 = time.process_time(), time.perf_counter()
            fn(p, t)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return {"cpu_s_per_clip": statistics.median(cpu), "wall_s_per_clip": statistics.median(wall),
            "clips_per_s_per_worker": 1 / statistics.median(cpu), "calls": len(cpu)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/decode")
    ap.add_argument("--videos", type=int, default=3, help="how many 10 s videos to make")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the videos per decoder (alternated)")
    ap.add_argument("--size", default="454x340", help="WIDTHxHEIGHT of the videos made (default 340p at 4:3)")
    ap.add_argument("--name", default="decode", help="the result file: OUT/NAME.json")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    t = ClipTransform(num_frames=8, image_size=224)
    status = torchcodec_status()
    decoders = {"pyav": pyav_clip}
    if status is None:
        decoders["torchcodec"] = torchcodec_clip
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"clip{i}.mp4") for i in range(args.videos)]
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            make_video(p, seed=i, width=width, height=height)
        made_s = time.perf_counter() - t0
        size_mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
        exact = None
        if "torchcodec" in decoders:
            exact = all(torch.equal(pyav_clip(p, t), torchcodec_clip(p, t)) for p in paths)
        results = {name: {"calls": 0, "cpu": [], "wall": []} for name in decoders}
        for _ in range(args.rounds):  # alternate the decoders round by round
            for name, fn in decoders.items():
                r = measure(fn, paths, t, 1)
                results[name]["cpu"].append(r["cpu_s_per_clip"])
                results[name]["wall"].append(r["wall_s_per_clip"])
    rows = {}
    for name, r in results.items():
        cpu, wall = statistics.median(r["cpu"]), statistics.median(r["wall"])
        rows[name] = {"cpu_s_per_clip": round(cpu, 4), "wall_s_per_clip": round(wall, 4),
                      "clips_per_s_per_worker": round(1 / cpu, 2)}
    record = {
        "clip": "8 frames, uniform, resize 256, centre crop 224, normalised",
        "videos": {"count": args.videos, "seconds": 10, "fps": 30, "size": f"{width}x{height}", "codec": "libx264 (.mp4)",
                   "mean_mb": round(size_mb, 2), "made_in_s": round(made_s, 1)},
        "rounds": args.rounds, "torch_threads": 1, "results": rows,
        "torchcodec": "measured" if status is None else f"not measured: {status}",
        "torchcodec_exact_on_same_frames": exact,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_after": os.getloadavg(), "shared": "other developers' work ran at the same time"},
        "versions": {"torch": torch.__version__, "av": __import__("av").__version__, "python": sys.version.split()[0]},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "command": "python benchmarks/decode_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
