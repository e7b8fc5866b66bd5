"""``train`` on list files, with multi-view evaluation and ``--init`` from another run's checkpoint of another
class count; ``predict --views`` (issue 25). Tiny clips and a one-block model: seconds."""
import json

import numpy as np
import pytest
import torch
from helpers import MODEL

from fast_timesformer.cli import console
from fast_timesformer.train import checkpoint as ckpt
from fast_timesformer.train.config import TrainConfig
from fast_timesformer.train.inference import predict_video
from fast_timesformer.train.trainer import Trainer

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")


def write_video(path, label, i, frames=6, h=16, w=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = np.full((h, w, 3), 20 + 40 * label + 3 * i + 4 * t, dtype=np.uint8)
            img[:, : w // 3, label % 3] = 250  # something that differs between the left and right crops
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture
def lists(tmp_path):
    root = tmp_path / "clips"
    train, val = [], []
    for label in range(5):
        for i in range(3):
            rel = f"class {label}/take {i}.mp4"
            write_video(root / rel, label, i)
            (val if i == 0 else train).append(f"{rel} {label}")
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "val.txt").write_text("\n\n".join(val) + "\n")
    return tmp_path, root


def config(tmp, root, out, **kw):
    return TrainConfig(**{**dict(dataset=str(tmp / "train.txt"), data_root=str(root), val_dataset=str(tmp / "val.txt"),
                                 model=MODEL, num_frames=4, image_size=16, batch=5, steps=2, lr=1e-3,
                                 out_dir=str(out), progress=False, device="cpu"), **kw})


def test_train_on_list_files_with_multi_view_evaluation(lists):
    tmp, root = lists
    trainer = Trainer(config(tmp, root, tmp / "run", eval_views="1x3"))
    assert trainer.classes == [str(i) for i in range(5)] and len(trainer.train_set) == 10
    record = trainer.fit()
    assert record["views"] == "1x3" and record["samples"] == 5
    assert set(record) >= {"acc", "top5", "mean_class_acc", "loss"}  # 5 classes: top-5 is reported
    # the multi-view loss is the NLL of the views' mean probability, computed here from the model directly
    x = torch.stack([trainer.eval_set[i][0] for i in range(5)])            # (5, 3 views, f, c, h, w)
    y = torch.tensor([trainer.eval_set[i][1] for i in range(5)])
    with torch.no_grad():
        probs = trainer.module.eval()(x.flatten(0, 1)).softmax(-1).unflatten(0, (5, 3)).mean(1)
    assert record["loss"] == pytest.approx(float(-probs[torch.arange(5), y].log().mean()), rel=1e-5)
    per_class = (probs.argmax(-1) == y).double()  # one clip per class: mean class accuracy = accuracy here
    assert record["mean_class_acc"] == pytest.approx(float(per_class.mean()))


def test_list_file_errors_from_the_command_line(lists, capsys):
    tmp, root = lists
    (tmp / "val.txt").write_text("class 0/take 0.mp4 0\nclass 1/take 2.mp4 1\n")  # take 2 is a training clip
    rc = console(["train", "--dataset", str(tmp / "train.txt"), "--data-root", str(root), "--val-dataset",
                  str(tmp / "val.txt"), "--model", MODEL, "--frames", "4", "--image-size", "16", "--steps", "1",
                  "--out", str(tmp / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{tmp / 'val.txt'}, line 2: class 1/take 2.mp4 is also in the training list" in err
    rc = console(["train", "--dataset", "moving-shapes", "--val-dataset", str(tmp / "val.txt"), "--steps", "1",
                  "--out", str(tmp / "run2")])
    assert rc == 2 and "--val-dataset goes with a list file as --dataset" in capsys.readouterr().err
    rc = console(["train", "--dataset", "moving-shapes", "--eval-views", "1x3", "--frames", "4", "--image-size",
                  "16", "--steps", "1", "--batch", "4", "--train-samples", "8", "--out", str(tmp / "run3")])
    assert rc == 2 and "--eval-views 1x3 takes views of video files" in capsys.readouterr().err
    rc = console(["train", "--dataset", "moving-shapes", "--eval-views", "3", "--out", str(tmp / "run4")])
    assert rc == 2 and "--eval-views must be TxS" in capsys.readouterr().err


def test_init_from_a_run_with_another_class_count(lists, capsys):
    tmp, root = lists
    first = Trainer(config(tmp, root, tmp / "five"))
    first.fit()
    source = str(tmp / "five" / "last.safetensors")
    # three of the five classes, another frame count: head re-initialised, time_embed resampled
    (tmp / "train3.txt").write_text("".join(f"class {c}/take {i}.mp4 {c}\n" for c in range(3) for i in (1, 2)))
    (tmp / "val3.txt").write_text("".join(f"class {c}/take 0.mp4 {c}\n" for c in range(3)))
    cfg = config(tmp, root, tmp / "three", dataset=str(tmp / "train3.txt"), val_dataset=str(tmp / "val3.txt"),
                 num_frames=2, batch=3, init=source)
    capsys.readouterr()
    second = Trainer(cfg)
    err = capsys.readouterr().err
    assert ("the classification head is re-initialised: the checkpoint's head.weight is (5, 32) (5 classes), "
            "this run's (3, 32) (3 classes)") in err
    assert "time_embed resampled from (1, 4, 32) to (1, 2, 32)" in err
    a, b = first.module.state_dict(), second.module.state_dict()
    assert torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])
    assert b["head.weight"].shape == (3, 32)
    assert second.step == 0 and not second.optimizer.state  # not --resume: optimizer and schedule afresh
    second.fit()
    assert ckpt.read_metadata(str(tmp / "three" / "last.safetensors"))["config"]["init"] == source


def test_predict_views(lists, capsys):
    tmp, root = lists
    Trainer(config(tmp, root, tmp / "run")).fit()
    path, model = str(root / "class 2/take 0.mp4"), str(tmp / "run" / "last.safetensors")
    one, three = predict_video(path, model, views="1x1"), predict_video(path, model, views="1x3")
    assert [n for n, _ in one] != [] and sum(p for _, p in three) <= 1 + 1e-6
    assert console(["predict", path, "--checkpoint", model, "--views", "1x3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [d["label"] for d in printed] == [n for n, _ in three]
