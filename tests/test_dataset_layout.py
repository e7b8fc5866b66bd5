"""A video folder means what it looks like (issue 20, family 2): the scan refuses, in one line naming the
folder, a class without videos, fewer than two classes, a file under two labels or in both splits (by real
path), and names a link loop as a loop; a video whose frame size changes mid-stream gives the one-line
error for that file. Every test writes its own tiny videos with PyAV."""
import os

import pytest
import torch

from fast_timesformer import video as V
from fast_timesformer.errors import BadVideoError, DatasetLayoutError
from fast_timesformer.train import data as D

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")


def write_video(path, num_frames=4, size=16, value=40, fmt=None):
    with av.open(str(path), mode="w", format=fmt) as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for t in range(num_frames):
            img = torch.full((size, size, 3), value + 5 * t, dtype=torch.uint8).numpy()
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_folder(root, classes=("dark", "bright"), per_class=2):
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_video(root / cls / f"{i}.mp4", value=30 + 150 * k + 3 * i)
    return root


def one_line(e) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


def test_a_clean_folder_passes(tmp_path):
    ds = D.VideoFolder(str(make_folder(tmp_path / "v")))
    assert ds.classes == ["bright", "dark"] and len(ds) == 4


def test_a_class_without_videos_is_refused_naming_its_folder(tmp_path):
    root = make_folder(tmp_path / "v")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no videos here")
    with pytest.raises(DatasetLayoutError) as e:
        D.VideoFolder(str(root))
    assert one_line(e.value).startswith(f"{root / 'empty'}: class 'empty' has no videos")


def test_a_class_emptied_by_skip_bad_videos_is_refused_and_says_so(tmp_path):
    root = make_folder(tmp_path / "v")
    (root / "broken").mkdir()
    (root / "broken" / "a.mp4").write_text("not a video")
    with pytest.raises(DatasetLayoutError) as e:
        D.VideoFolder(str(root), skip_bad=True)
    assert "class 'broken' has no videos (--skip-bad-videos left out its 1 unreadable file)" in one_line(e.value)
    with pytest.raises(BadVideoError):  # without the option the file itself is named, as before
        D.VideoFolder(str(root))


def test_a_single_class_is_refused(tmp_path):
    root = make_folder(tmp_path / "v", classes=("only",))
    with pytest.raises(DatasetLayoutError, match=r"has 1 class \('only'\); classification needs at least two"):
        D.VideoFolder(str(root))


def test_a_class_folder_linked_to_another_puts_a_file_under_two_labels(tmp_path):
    root = make_folder(tmp_path / "v")
    os.symlink(root / "dark", root / "extra")
    with pytest.raises(DatasetLayoutError) as e:
        D.VideoFolder(str(root))
    msg = one_line(e.value)
    assert msg.startswith(f"{root}: ") and "under two labels ('dark' and 'extra')" in msg
    assert str(root / "dark" / "0.mp4") in msg and str(root / "extra" / "0.mp4") in msg


def test_a_class_folder_linked_to_the_root_is_named_as_a_loop(tmp_path):
    root = make_folder(tmp_path / "v")
    os.symlink(root, root / "all")
    with pytest.raises(DatasetLayoutError, match="is a link loop: it leads back to"):
        D.VideoFolder(str(root))


def test_a_folder_link_back_into_its_class_is_a_loop(tmp_path):
    root = make_folder(tmp_path / "v")
    os.symlink(root / "dark", root / "dark" / "again")
    with pytest.raises(DatasetLayoutError) as e:
        D.VideoFolder(str(root))
    assert one_line(e.value) == (f"{root / 'dark' / 'again'}: is a link loop: it leads back to {root / 'dark'}, "
                                 "which holds it")


def test_a_file_link_loop_is_named_as_a_loop_not_as_missing(tmp_path):
    root = make_folder(tmp_path / "v")
    os.symlink(root / "dark" / "b.mp4", root / "dark" / "a.mp4")
    os.symlink(root / "dark" / "a.mp4", root / "dark" / "b.mp4")
    with pytest.raises(DatasetLayoutError, match="a.mp4: is a link loop"):
        D.VideoFolder(str(root))
    assert "link loop" in V.check_video(str(root / "dark" / "a.mp4"))
    with pytest.raises(BadVideoError, match="is a link loop"):
        V.read_video(str(root / "dark" / "a.mp4"), 2)
    os.symlink(root / "nowhere.mp4", root / "dark" / "dangling.mp4")
    assert V.check_video(str(root / "dark" / "dangling.mp4")).startswith("is a link to ")


def test_a_file_in_both_splits_is_refused(tmp_path):
    root = tmp_path / "v"
    make_folder(root / "train")
    make_folder(root / "val", per_class=1)
    os.symlink(root / "train" / "dark" / "1.mp4", root / "val" / "dark" / "leak.mp4")
    with pytest.raises(DatasetLayoutError) as e:
        D.build_train_eval(str(root), num_frames=2, image_size=16)
    msg = one_line(e.value)
    assert msg.startswith(f"{root}: ") and "in both the training and the evaluation split" in msg


def test_a_file_twice_in_one_class_is_refused_before_a_held_out_split(tmp_path):
    root = make_folder(tmp_path / "v", per_class=3)
    os.link(root / "dark" / "0.mp4", root / "dark" / "copy.mp4")  # a hard link: the same file, not a link
    os.symlink(root / "dark" / "1.mp4", root / "dark" / "alias.mp4")
    with pytest.raises(DatasetLayoutError, match="twice in class 'dark'"):
        D.build_train_eval(str(root), num_frames=2, image_size=16)


def test_check_entries_serves_lists_of_files_too(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    D.check_entries([(str(a), 0, "train"), (str(b), 1, "train"), (str(b.resolve()), 1, "train")][:2], ["x", "y"],
                    where="list.txt")
    with pytest.raises(DatasetLayoutError, match=r"^list.txt: class 'z' has no videos"):
        D.check_entries([(str(a), 0, "train"), (str(b), 1, "train")], ["x", "y", "z"], where="list.txt")
    with pytest.raises(DatasetLayoutError, match="in both the training and the evaluation split"):
        D.check_entries([(str(a), 0, "train"), (str(b), 1, "train"), (str(a), 0, "eval")], ["x", "y"],
                        where="list.txt")
    D.check_entries([(str(a), 0, "eval")], ["x", "y"], where="val.txt")  # a class may have no evaluation clip


def test_a_frame_size_that_changes_mid_stream_is_one_line_naming_the_file(tmp_path):
    # two raw MPEG-4 streams of different sizes, one after the other: one file whose frames change size
    write_video(tmp_path / "a.m4v", size=16, fmt="m4v")
    write_video(tmp_path / "b.m4v", size=32, fmt="m4v")
    path = tmp_path / "ab.m4v"
    path.write_bytes((tmp_path / "a.m4v").read_bytes() + (tmp_path / "b.m4v").read_bytes())
    with pytest.raises(BadVideoError) as e:
        V.read_video(str(path), 8)
    assert one_line(e.value) == f"{path}: its frame size changes mid-stream: frame 0 is 16x16, frame 4 is 32x32"


def test_read_video_on_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(BadVideoError, match=r"is a folder, not a video file$"):
        V.read_video(str(tmp_path), 2)
    assert V.check_video(str(tmp_path)) == "is a folder, not a video file"


def test_the_command_line_refuses_a_single_class_folder_in_one_line(tmp_path, capsys):
    from fast_timesformer.cli import console

    root = make_folder(tmp_path / "v", classes=("only",))
    rc = console(["train", "--dataset", str(root), "--steps", "1", "--frames", "2", "--image-size", "16",
                  "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "classification needs at least two" in err, err
    assert not (tmp_path / "run").exists()
