"""What the training data costs: decoding one clip per decoder, and the dataset folder scan (one torch thread,
as a DataLoader worker runs). Timed: wall seconds per call; ``extra_info``: process CPU seconds per call
(median; what one worker costs on a core of its own, hardly changed by other work on a shared machine, unlike
the wall time), the load average, the videos.

decode: one clip is what a worker hands the trainer for a ViT-B 8x224 step: 8 frames sampled uniformly from a
10 s, 30 fps H.264 .mp4 (made here: noise panning under moving gradients, so the encoder has real work),
resized (shorter side 256), centre-cropped to 224, normalised. torchcodec is skipped with the reason it does not
load, also recorded on the PyAV case. scan: ``VideoFolder`` over 2 classes x 500 small videos (16x16, 8
frames, mpeg4): the layout rules alone (``check=False``) and the whole scan run before training.

    pytest benchmarks/test_bench_data.py -k 'not tiny' -p no:randomly --benchmark-only --benchmark-json=benchmarks/results/data/data.json
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch

from fast_timesformer.environment import load_average
from fast_timesformer.errors import first_line
from fast_timesformer.train.data import VideoFolder
from fast_timesformer.video import ClipTransform, preprocess_clip, read_video, sample_frame_indices

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")

CLIP = ClipTransform(num_frames=8, image_size=224)
# name: (videos, seconds, width, height); each video is decoded PASSES times, round-robin
DECODE = {"tiny": (1, 1, 160, 120), "454x340": (3, 10, 454, 340), "340x256": (3, 10, 340, 256)}
PASSES = 3
SCAN = {"tiny": 10, "1000": 500}  # videos per class


def write_video(path, *, frames, width, height, fps, codec, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            shift = (4 * t) % width
            img = base[:, shift:shift + width].copy()  # the texture pans right
            img[..., 0], img[..., 1] = (xx + 3 * t) % 256, (yy + 2 * t) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def torchcodec_problem() -> str | None:
    """None if torchcodec imports here, else why not (one line)."""
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as e:  # an ImportError, or an OSError from its shared libraries
        cause = e.__cause__ or e.__context__
        return first_line(e) + (f" ({first_line(cause)})" if cause is not None else "")
    return None


def pyav_clip(path):
    return preprocess_clip(read_video(str(path), CLIP.num_frames, "uniform"), CLIP)


def torchcodec_clip(path):
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path), seek_mode="exact", num_ffmpeg_threads=1)
    idx = sample_frame_indices(dec.metadata.num_frames, CLIP.num_frames, "uniform")
    return preprocess_clip(dec.get_frames_at(idx).data, CLIP)  # (f, 3, H, W) uint8


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def timed(benchmark, fn, rounds, **info):
    """Benchmark ``fn`` (one warm-up call, then ``rounds``) and record its median CPU seconds per call."""
    cpu = []

    def call():
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    med = statistics.median(cpu[1:] or cpu)  # one call only under --benchmark-disable
    benchmark.extra_info.update(info, cpu_s_per_call=round(med, 4), calls_per_cpu_s=round(1 / med, 2),
                                loadavg=load_average(), torch_threads=torch.get_num_threads())


@pytest.fixture(scope="module", params=list(DECODE))
def clips(request, tmp_path_factory):
    n, seconds, width, height = DECODE[request.param]
    root = tmp_path_factory.mktemp("decode")
    paths = [root / f"clip{i}.mp4" for i in range(n)]
    for i, p in enumerate(paths):
        write_video(p, frames=30 * seconds, width=width, height=height, fps=30, codec="libx264", seed=i)
    return request.param, paths


@pytest.mark.parametrize("decoder", ["pyav", "torchcodec"])
def test_decode(benchmark, one_thread, clips, decoder):
    size, paths = clips
    problem = torchcodec_problem()
    if decoder == "torchcodec" and problem is not None:
        pytest.skip(f"torchcodec does not load here: {problem}")
    fn = pyav_clip if decoder == "pyav" else torchcodec_clip
    benchmark.group = f"decode {size}"
    info = dict(decoder=decoder, size=size, videos=len(paths), seconds=DECODE[size][1], codec="libx264",
                mean_mb=round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6, 2),
                torchcodec="measured" if problem is None else f"not measured: {problem}")
    if decoder == "torchcodec":
        info["exact_vs_pyav"] = all(torch.equal(pyav_clip(p), torchcodec_clip(p)) for p in paths)
    nxt = iter(paths * (PASSES + 1))
    timed(benchmark, lambda: fn(next(nxt)), rounds=len(paths) * PASSES, **info)
    clip = fn(paths[0])  # what was timed is the clip a worker hands the trainer
    assert clip.shape == (CLIP.num_frames, 3, 224, 224) and clip.dtype == torch.float32 and clip.isfinite().all()


@pytest.fixture(scope="module", params=list(SCAN))
def folder(request, tmp_path_factory):
    root, per_class = tmp_path_factory.mktemp("scan"), SCAN[request.param]
    for k in range(2):
        (root / f"c{k}").mkdir()
        for i in range(per_class):
            write_video(root / f"c{k}" / f"{i}.mp4", frames=8, width=16, height=16, fps=8, codec="mpeg4", seed=i)
    return request.param, root, 2 * per_class


@pytest.mark.parametrize("check", [False, True], ids=["layout", "full"])
def test_scan(benchmark, one_thread, folder, check):
    size, root, files = folder
    benchmark.group = f"scan {size}"
    timed(benchmark, lambda: VideoFolder(str(root), check=check), rounds=5, files=files, check=check)
    assert len(VideoFolder(str(root), check=False)) == files
