"""Video folders with unreadable files, files that fail during training, and the held-out split of a folder
without val/ (issue 9). Every test writes its own tiny videos with PyAV."""
import json
import re

import pytest
import torch
from helpers import MODEL

from fast_timesformer import video
from fast_timesformer.errors import BadVideoError
from fast_timesformer.train import checkpoint as ckpt
from fast_timesformer.train import data as D
from fast_timesformer.train.config import TrainConfig
from fast_timesformer.train.trainer import Trainer

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")


def write_video(path, num_frames=6, size=16, value=40, codec="mpeg4", noise=False):
    g = torch.Generator().manual_seed(0)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for t in range(num_frames):
            img = torch.full((size, size, 3), value + 5 * t, dtype=torch.uint8)
            if noise:  # incompressible frames: the packets fill the file, so a cut falls among them
                img = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g)
            img = img.numpy()
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_folder(root, per_class=3, classes=("dark", "bright")):
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_video(root / cls / f"{i}.mp4", value=30 + 150 * k + 3 * i)
    return root


def add_bad_files(root):
    """A text file named .mp4, the first half of a real mp4, and an avi cut at 80 %: three kinds of damage."""
    (root / "dark" / "notes.mp4").write_text("not a video, only a name\n")
    whole = root / "whole.mp4"
    write_video(whole, num_frames=12)
    data = whole.read_bytes()
    (root / "bright" / "half.mp4").write_bytes(data[: len(data) // 2])
    whole.unlink()
    write_video(root / "cut.avi", num_frames=12, size=32, noise=True)
    data = (root / "cut.avi").read_bytes()
    (root / "dark" / "cut.avi").write_bytes(data[: int(len(data) * 0.8)])
    (root / "cut.avi").unlink()
    return [root / "dark" / "notes.mp4", root / "bright" / "half.mp4", root / "dark" / "cut.avi"]


def cfg(tmp_path, root, **kw):
    base = dict(model=MODEL, dataset=str(root), num_frames=4, image_size=16, batch=2, steps=2, lr=3e-3, warmup=1,
                out_dir=str(tmp_path / "run"), progress=False, log_every=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


# ---- the scan before training ---------------------------------------------------------------------
def test_scan_names_every_bad_file(tmp_path):
    root = make_folder(tmp_path / "videos", per_class=2)
    bad = add_bad_files(root)
    assert video.check_video(str(root / "dark" / "0.mp4")) is None
    with pytest.raises(BadVideoError) as info:
        D.VideoFolder(str(root))
    e = info.value
    assert sorted(p for p, _ in e.problems) == sorted(map(str, bad))  # every one, not only the first
    msg = str(e)
    assert "\n" not in msg and msg.startswith("3 unreadable video files: ")
    reasons = dict(e.problems)
    assert reasons[str(bad[0])] == "cannot be opened as a video (Invalid data found when processing input)"
    assert re.fullmatch(r"is truncated: \d+ of the 12 frames it declares are present", reasons[str(bad[2])])
    assert reasons[str(bad[1])] in ("has no video stream (streams: data): not a video, or cut off before its "
                                    "stream headers",
                                    "cannot be opened as a video (Invalid data found when processing input)")


def test_cli_bad_videos_one_line_and_skip_option(tmp_path, capsys):
    from fast_timesformer.cli import console

    root = make_folder(tmp_path / "videos", per_class=3)
    bad = add_bad_files(root)
    args = ["train", "--dataset", str(root), "--model", MODEL, "--frames", "4", "--image-size", "16", "--batch", "2",
            "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert console(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fast-timesformer: error: 3 unreadable video files: ")
    assert all(str(p) in err for p in bad)

    assert console(args + ["--skip-bad-videos"]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("fast-timesformer: skipped 3 unreadable video files "
                                                       "(--skip-bad-videos): ")
    assert all(str(p) in skipped[0] for p in bad)
    data = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert data["split"] == "data" and sorted(p for p, _ in data["skipped"]) == sorted(map(str, bad))
    meta = ckpt.read_metadata(str(tmp_path / "run" / "last.safetensors"))
    assert len(meta["extra"]["data"]["skipped"]) == 3


def test_read_video_names_a_file_that_fails_mid_stream(tmp_path, monkeypatch):
    """A decoder error on a later frame (simulated: PyAV's decode raises after two frames) is a BadVideoError
    naming the file and the frame, not PyAV's exception."""
    path = tmp_path / "clip.mp4"
    write_video(path)
    real_av = video._import_av()

    class Container:
        def __init__(self, inner):
            self.inner, self.streams = inner, inner.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def decode(self, stream):
            for k, frame in enumerate(self.inner.decode(stream)):
                if k == 2:
                    raise real_av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    class FakeAV:
        error = real_av.error

        @staticmethod
        def open(p):
            return Container(real_av.open(p))

    monkeypatch.setattr(video, "_import_av", lambda: FakeAV)
    with pytest.raises(BadVideoError, match=r"clip\.mp4: cannot decode frame 2 \(Invalid data found"):
        video.read_video(str(path), 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_file_failing_during_training_stops_with_one_line_and_a_checkpoint(tmp_path, monkeypatch, capsys, workers):
    """A file that passes the scan but cannot be decoded when training reads it (here: replaced by garbage
    after the scan) stops the run with the same one line with or without DataLoader workers (no worker
    traceback), after saving a checkpoint at the last completed step."""
    from fast_timesformer.cli import console

    root = make_folder(tmp_path / "videos", per_class=4)
    broken = root / "bright" / "2.mp4"
    broken.write_bytes(b"\x00garbage" * 64)
    monkeypatch.setattr(D, "check_video", lambda path: None)  # the scan passes it, as if damaged later
    out = tmp_path / "run"
    rc = console(["train", "--dataset", str(root), "--model", MODEL, "--frames", "4", "--image-size", "16",
                  "--batch", "2", "--epochs", "3", "--val-fraction", "0", "--workers", str(workers),
                  "--out", str(out), "--no-progress"])
    assert rc == 2
    note, err = capsys.readouterr().err.splitlines(keepends=True)  # the "no evaluation" note, then the error
    assert "no evaluation" in note and "Traceback" not in err and "DataLoader" not in err, err
    assert err.startswith(f"fast-timesformer: error: {broken}: cannot be opened as a video")
    meta = ckpt.read_metadata(str(out / "last.safetensors"))
    assert err.rstrip().endswith(f"the run stopped at step {meta['step']} with a checkpoint in "
                                 f"{out / 'last.safetensors'}")
    assert meta["step"] < 12  # it stopped when the file came up, before the end (8 files x 3 epochs / 2)


# ---- the held-out split ---------------------------------------------------------------------------
def test_folder_without_val_holds_out_a_stratified_seeded_split(tmp_path):
    root = make_folder(tmp_path / "videos", per_class=5)
    train, held, info = D.build_train_eval(str(root), num_frames=4, image_size=16, seed=0, val_fraction=0.4)
    tr, ev = {p for p, _ in train.samples}, {p for p, _ in held.samples}
    assert not tr & ev and len(tr | ev) == 10  # never evaluated on a training clip
    assert sorted(label for _, label in held.samples) == [0, 0, 1, 1]  # 40 % of each class
    assert held.transform.sampling == "uniform" and train.transform.sampling == "random"
    assert info == {"eval": "held-out", "val_fraction": 0.4, "split_seed": 0, "train_files": 6, "eval_files": 4,
                    "skipped": []}
    again = D.build_train_eval(str(root), num_frames=4, image_size=16, seed=0, val_fraction=0.4)[1]
    assert again.samples == held.samples  # the same split from the same seed
    default = D.build_train_eval(str(root), num_frames=4, image_size=16, seed=0)[2]
    assert default["val_fraction"] == D.DEFAULT_VAL_FRACTION and default["eval_files"] == 2  # at least 1 a class
    none = D.build_train_eval(str(root), num_frames=4, image_size=16, val_fraction=0)
    assert none[1] is None and len(none[0]) == 10 and none[2]["eval"] == "none"
    (root / "val").mkdir()
    with pytest.raises(ValueError, match="val/ folder, which is the evaluation set"):
        D.build_train_eval(str(root), num_frames=4, image_size=16, val_fraction=0.2)
    with pytest.raises(ValueError, match="has its own evaluation set"):
        D.build_train_eval("moving-shapes", num_frames=4, image_size=16, val_fraction=0.2)


def test_training_reports_the_split_and_never_evaluates_on_training_clips(tmp_path, capsys):
    root = make_folder(tmp_path / "videos", per_class=3)
    t = Trainer(cfg(tmp_path, root))
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "has no val/ folder: 2 of its 6 videos are held out for evaluation" in note
    out = t.fit()
    assert out["split"] == "eval" and out["samples"] == 2
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["split"] == "data" and records[0]["eval_files"] == 2
    assert ckpt.read_metadata(str(tmp_path / "run" / "last.safetensors"))["extra"]["data"]["eval"] == "held-out"

    off = Trainer(cfg(tmp_path, root, val_fraction=0.0, out_dir=str(tmp_path / "off")))
    assert "no evaluation" in capsys.readouterr().err
    out = off.fit()
    assert out["split"] == "train"
    records = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert "eval" not in {r["split"] for r in records} and not (tmp_path / "off" / "best.safetensors").exists()


def test_file_failing_during_evaluation_stops_with_one_line_and_a_checkpoint(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "videos", per_class=3)
    t = Trainer(cfg(tmp_path, root, steps=2))
    broken = t.eval_set.samples[0][0]  # a held-out file, damaged after the check
    with open(broken, "wb") as f:
        f.write(b"\x00garbage" * 64)
    with pytest.raises(BadVideoError) as info:
        t.fit()
    last = tmp_path / "run" / "last.safetensors"
    assert str(info.value).startswith(f"{broken}: cannot be opened as a video")
    assert str(info.value).endswith(f"; the run stopped at step 2 with a checkpoint in {last}")
    assert ckpt.read_metadata(str(last))["step"] == 2
