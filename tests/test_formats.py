"""List files and the Kinetics / Something-Something v2 converters (issue 25), on small synthetic sets
written here: Kinetics- and SSv2-shaped annotations, a few tiny clips, some clips missing, a template
that is not in the labels file."""
import csv
import json
import os

import numpy as np
import pytest

from fast_timesformer.cli import console
from fast_timesformer.train import formats as F

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")


def write_video(path, num_frames=6, size=16, value=40, codec="mpeg4"):
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for t in range(num_frames):
            img = av.VideoFrame.from_ndarray(np.full((size, size, 3), value + 5 * t, dtype=np.uint8), format="rgb24")
            for p in s.encode(img):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


# ---- list files -----------------------------------------------------------------------------------
@pytest.fixture
def clips(tmp_path):
    root = tmp_path / "videos"
    for name in ("a.mp4", "b.mp4", "with space/c d.mp4", "e.mp4"):
        write_video(root / name)
    return root


def test_list_file_indices_names_spaces_blank_lines(tmp_path, clips):
    classes = tmp_path / "classes.txt"
    classes.write_text("jump\n\nrun high\n")
    listed = tmp_path / "train.txt"
    listed.write_text("a.mp4 0\n\n   b.mp4\tjump  \nwith space/c d.mp4 1\n\n")
    entries, names = F.read_list_file(str(listed), str(clips), F.read_classes(str(classes)))
    assert names == ["jump", "run high"]
    assert [(e.path, e.label, e.line) for e in entries] == [
        ("a.mp4", 0, 1), ("b.mp4", 0, 3), ("with space/c d.mp4", 1, 4)]
    assert entries[2].file == os.path.join(str(clips), "with space/c d.mp4")


def test_list_file_classes_from_the_list(tmp_path, clips):
    (tmp_path / "idx.txt").write_text("a.mp4 2\nb.mp4 0\n")
    assert F.read_list_file(str(tmp_path / "idx.txt"), str(clips))[1] == ["0", "1", "2"]
    (tmp_path / "names.txt").write_text("a.mp4 walk\nb.mp4 fly\n")
    entries, names = F.read_list_file(str(tmp_path / "names.txt"), str(clips))
    assert names == ["fly", "walk"] and [e.label for e in entries] == [1, 0]
    (tmp_path / "mixed.txt").write_text("a.mp4 walk\nb.mp4 0\n")
    with pytest.raises(F.ListFileError, match=r"mixed.txt, line 2: label '0' is an index"):
        F.read_list_file(str(tmp_path / "mixed.txt"), str(clips))


@pytest.mark.parametrize("text,problem", [
    ("a.mp4 0\nmissing.mp4 1\n", r"line 2: missing.mp4 does not exist under the data root"),
    ("a.mp4 0\n\nb.mp4 2\n", r"line 3: label 2 is outside the 2 classes \(0 to 1\)"),
    ("a.mp4 swim\n", r"line 1: label 'swim' is not one of the 2 class names"),
    ("a.mp4 0\nb.mp4 1\n./a.mp4 1\n", r"line 3: ./a.mp4 is listed already on line 1"),
    ("a.mp4\n", r"line 1: expected 'PATH LABEL'"),
])
def test_list_file_errors_name_file_and_line(tmp_path, clips, text, problem):
    listed = tmp_path / "bad list.txt"
    listed.write_text(text)
    with pytest.raises(F.ListFileError, match="bad list.txt, " + problem):
        F.read_list_file(str(listed), str(clips), ["jump", "run"])


def test_clip_in_both_lists_and_class_file_errors(tmp_path, clips):
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (tmp_path / "val.txt").write_text("videos/e.mp4 0\n\nvideos/../videos/b.mp4 1\n")
    train, classes = F.read_list_file(str(tmp_path / "train.txt"), str(clips))
    val, _ = F.read_list_file(str(tmp_path / "val.txt"), str(clips.parent), classes)
    with pytest.raises(F.ListFileError, match=r"val.txt, line 3: videos/../videos/b.mp4 is also in the training "
                                              r"list .*train.txt \(line 2\)"):
        F.check_disjoint(train, str(tmp_path / "train.txt"), val, str(tmp_path / "val.txt"))
    (tmp_path / "dup.txt").write_text("x\ny\n\nx\n")
    with pytest.raises(F.ListFileError, match=r"dup.txt, line 4: class 'x' is named already on line 1"):
        F.read_classes(str(tmp_path / "dup.txt"))
    with pytest.raises(FileNotFoundError, match="no such list file"):
        F.read_list_file(str(tmp_path / "none.txt"), str(clips))


# ---- Kinetics -------------------------------------------------------------------------------------
def kinetics_set(tmp_path):
    """A Kinetics-shaped set: two CSVs (one with is_cc), clips flat and in class folders, two missing."""
    videos = tmp_path / "k400"
    rows = [("abseiling", "aaaaaaaaaaa", 14, 24, "train"), ("air drumming", "bbbbbbbbbbb", 0, 10, "train"),
            ("air drumming", "ccccccccccc", 5, 15, "train"), ("abseiling", "ddddddddddd", 100, 110, "train"),
            ("abseiling", "eeeeeeeeeee", 30, 40, "validate"), ("air drumming", "fffffffffff", 1, 11, "validate")]
    missing = {"ccccccccccc", "fffffffffff"}
    for label, yid, t0, t1, _ in rows:
        if yid in missing:
            continue
        folder = "" if yid == "aaaaaaaaaaa" else ("air_drumming" if label == "air drumming" else label)
        write_video(videos / folder / f"{yid}_{t0:06d}_{t1:06d}.mp4")
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        w.writerows([(*r, 0) for r in rows[:4]])
    with open(tmp_path / "validate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows(rows[4:])
    return videos


def test_kinetics_converter(tmp_path):
    videos = kinetics_set(tmp_path)
    conv = F.convert_kinetics([str(tmp_path / "train.csv"), str(tmp_path / "validate.csv")], str(videos),
                              str(tmp_path / "lists"))
    assert conv.classes == ["abseiling", "air drumming"]
    assert (tmp_path / "lists" / "classes.txt").read_text() == "abseiling\nair drumming\n"
    assert (tmp_path / "lists" / "train.txt").read_text().splitlines() == [
        "aaaaaaaaaaa_000014_000024.mp4 0", "air_drumming/bbbbbbbbbbb_000000_000010.mp4 1",
        "abseiling/ddddddddddd_000100_000110.mp4 0"]
    assert (tmp_path / "lists" / "validate.txt").read_text().splitlines() == [
        "abseiling/eeeeeeeeeee_000030_000040.mp4 0"]
    assert conv.missing == {"train": ["ccccccccccc_000005_000015.mp4"], "validate": ["fffffffffff_000001_000011.mp4"]}
    report = conv.report()
    assert "train.txt: 3 clips; 1 not found under" in report[0] and "ccccccccccc_000005_000015.mp4" in report[0]
    # the lists read back as the training loader reads them
    entries, classes = F.read_list_file(conv.lists["train"][0], str(videos), F.read_classes(conv.classes_path))
    assert [e.label for e in entries] == [0, 1, 0] and classes == conv.classes


def test_kinetics_check_reports_unreadable_and_errors(tmp_path, capsys):
    videos = kinetics_set(tmp_path)
    (videos / "abseiling" / "ddddddddddd_000100_000110.mp4").write_bytes(b"not a video")
    rc = console(["data", "kinetics", str(tmp_path / "train.csv"), "--videos", str(videos), "--out",
                  str(tmp_path / "out"), "--check"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train.txt: 2 clips; 1 not found under" in out and "1 unreadable (left out)" in out
    assert "ddddddddddd_000100_000110.mp4: cannot be opened as a video" in out
    assert "train with: fast-timesformer train --dataset" in out
    assert len((tmp_path / "out" / "train.txt").read_text().splitlines()) == 2
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,split\nx,y,1,train\n")
    assert console(["data", "kinetics", str(tmp_path / "bad.csv"), "--videos", str(videos), "--out",
                    str(tmp_path / "o2")]) == 2
    assert "bad.csv, line 1: no column time_end" in capsys.readouterr().err
    (tmp_path / "nan.csv").write_text("label,youtube_id,time_start,time_end,split\nx,y,1,soon,train\n")
    with pytest.raises(F.ListFileError, match=r"nan.csv, line 2: time_end 'soon' is not a number"):
        F.convert_kinetics(str(tmp_path / "nan.csv"), str(videos), str(tmp_path / "o3"))
    (tmp_path / "gone.csv").write_text("label,youtube_id,time_start,time_end,split\nx,zzzzzzzzzzz,1,2,train\n")
    with pytest.raises(FileNotFoundError, match="none of the 1 clips were found"):
        F.convert_kinetics(str(tmp_path / "gone.csv"), str(videos), str(tmp_path / "o4"))


# ---- Something-Something v2 -----------------------------------------------------------------------
def ssv2_set(tmp_path, *, bad_template=False):
    root = tmp_path / "ssv2"
    root.mkdir()
    labels = {"Holding something": "0", "Pushing something from left to right": "1",
              "Putting something on a surface": "2"}
    (root / F.SSV2_FILES["labels"]).write_text(json.dumps(labels))
    train = [{"id": "11", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
             {"id": "12", "label": "pushing a pen from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
             {"id": "13", "label": "holding a key", "template": "Holding [something]", "placeholders": ["a key"]}]
    if bad_template:
        train.append({"id": "14", "label": "spinning a top", "template": "Spinning [something]",
                      "placeholders": ["a top"]})
    val = [{"id": "21", "label": "putting a box on a table", "template": "Putting [something] on a surface",
            "placeholders": ["a box"]}, {"id": "22", "label": "holding a mug", "template": "Holding [something]",
                                         "placeholders": ["a mug"]}]
    (root / F.SSV2_FILES["train"]).write_text(json.dumps(train))
    (root / F.SSV2_FILES["validation"]).write_text(json.dumps(val))
    for vid in ("11", "12", "21"):  # 13 and 22 are missing
        write_video(root / "videos" / f"{vid}.webm", codec="libvpx")
    return root


def test_ssv2_converter(tmp_path, capsys):
    root = ssv2_set(tmp_path)
    out = tmp_path / "lists"
    assert console(["data", "ssv2", str(root), "--videos", str(root / "videos"), "--out", str(out),
                    "--check"]) == 0
    printed = capsys.readouterr().out
    assert (out / "classes.txt").read_text().splitlines() == [
        "Holding something", "Pushing something from left to right", "Putting something on a surface"]
    assert (out / "train.txt").read_text().splitlines() == ["11.webm 0", "12.webm 1"]
    assert (out / "validation.txt").read_text().splitlines() == ["21.webm 2"]
    assert "train.txt: 2 clips; 1 not found under" in printed and "13.webm" in printed
    assert "validation.txt: 1 clip; 1 not found under" in printed and "22.webm" in printed
    assert "--val-dataset" in printed and "validation.txt" in printed


def test_ssv2_template_not_in_labels(tmp_path, capsys):
    root = ssv2_set(tmp_path, bad_template=True)
    assert console(["data", "ssv2", str(root), "--videos", str(root / "videos"), "--out",
                    str(tmp_path / "lists")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "something-something-v2-train.json: entry 3 (id 14): template 'Spinning something' is not in" in err
    assert not (tmp_path / "lists").exists()  # nothing written


# ---- training sets from list files ------------------------------------------------------------------
def test_list_train_eval_sets(tmp_path, clips):
    (tmp_path / "classes.txt").write_text("jump\nrun\n")
    (tmp_path / "train.txt").write_text("a.mp4 jump\nb.mp4 run\nwith space/c d.mp4 1\n")
    (tmp_path / "val.txt").write_text("e.mp4 0\n")
    train, ev, info = F.build_list_train_eval(str(tmp_path / "train.txt"), data_root=str(clips),
                                              classes=str(tmp_path / "classes.txt"), val_list=str(tmp_path / "val.txt"),
                                              num_frames=4, image_size=16)
    assert train.classes == ev.classes == ["jump", "run"]
    assert [label for _, label in train.samples] == [0, 1, 1] and len(ev) == 1
    assert info["eval"] == "list" and info["train_files"] == 3
    x, y = train[2]
    assert x.shape == (4, 3, 16, 16) and y == 1
    assert ev.transform.crop == "center" and train.transform.crop == "random"
    # without an evaluation list: a held-out split, as for a folder without val/
    train, ev, info = F.build_list_train_eval(str(tmp_path / "train.txt"), data_root=str(clips),
                                              classes=str(tmp_path / "classes.txt"), num_frames=4, image_size=16,
                                              val_fraction=0.5)
    assert info["eval"] == "held-out" and len(train) + len(ev) == 3 and len(ev) == 1
    with pytest.raises(ValueError, match="--val-fraction splits a training list given without one"):
        F.build_list_train_eval(str(tmp_path / "train.txt"), data_root=str(clips), val_list=str(tmp_path / "val.txt"),
                                classes=str(tmp_path / "classes.txt"), val_fraction=0.2)


def test_list_files_get_the_folder_scan(tmp_path, clips):
    from fast_timesformer.errors import BadVideoError

    (clips / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "train.txt").write_text("a.mp4 0\nbroken.mp4 1\nb.mp4 1\n")
    with pytest.raises(BadVideoError, match="broken.mp4: cannot be opened as a video"):
        F.build_list_train_eval(str(tmp_path / "train.txt"), data_root=str(clips), num_frames=4, image_size=16)
    train, _, info = F.build_list_train_eval(str(tmp_path / "train.txt"), data_root=str(clips), num_frames=4,
                                             image_size=16, skip_bad=True, val_fraction=0)
    assert len(train) == 2 and [p for p, _ in info["skipped"]] == [str(clips / "broken.mp4")]
