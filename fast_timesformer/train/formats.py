"""Video data sets as researchers keep them: list files, and converters from Kinetics' CSV and
Something-Something v2's JSON into list files.

A **list file** (the mmaction2 / SlowFast / VideoMAE way) has one clip a line, ``PATH LABEL``:

* ``PATH`` is relative to a data root (or absolute) and may contain spaces: the label is the last field;
* ``LABEL`` is a class index (a whole number) or a class name from the class-name file;
* blank lines and the whitespace around a line are ignored.

A **class-name file** has one name a line; line ``i`` (blank lines not counted) is class ``i``. Without
one, the classes are the labels of the training list: ``0 .. max`` where they are indices, the sorted
names where they are names.

Everything that is wrong with a list is one :class:`ListFileError` naming the list file and the line:
a missing clip, a label outside the classes, a clip listed twice (by real path), a clip in both the
training and the evaluation list. The clips a list names are then scanned as a class folder's are
(:func:`fast_timesformer.video.check_video`).

The converters end every format as list files plus ``classes.txt``:

* :func:`convert_kinetics` - Kinetics-400/600/700 CSVs (``label,youtube_id,time_start,time_end,split``,
  sometimes ``is_cc``); clips named ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, flat under the
  video folder or in a folder per class (the label as written, or with ``_`` for spaces). Classes are the
  sorted labels (the usual Kinetics indices). One list per ``split`` value, named after it.
* :func:`convert_ssv2` - Something-Something v2's ``something-something-v2-labels.json`` (template ->
  index) and ``-train.json`` / ``-validation.json`` (``{"id", "label", "template", "placeholders"}``);
  clips named ``{id}.webm``; the template's brackets are dropped to find its index.

Clips a converter cannot find are left out of the list and reported (how many, the first few by name):
public copies of these sets always miss some. ``check=True`` also reads every found clip's header as the
training scan does and leaves out (and reports) the unreadable ones.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import FastTimesformerError
from ..outputs import check_output_dir, write_text

__all__ = [
    "ListFileError", "ListEntry", "read_classes", "read_list_file", "check_disjoint", "write_list_file",
    "Conversion", "convert_kinetics", "convert_ssv2", "SSV2_FILES", "FIRST_FEW", "build_list_train_eval",
]

FIRST_FEW = 5  # how many missing or unreadable clips a report names


class ListFileError(FastTimesformerError, ValueError):
    """A list file or class-name file is wrong at one line: the message names the file and the line."""

    def __init__(self, path, line: Optional[int], problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class ListEntry:
    """One clip of a list file: the path as written, the file it names, its class index and its line."""
    path: str
    file: str
    label: int
    line: int


def _lines(path: str):
    """(line number, stripped text) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such list file: {path}")
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            text = text.strip()
            if text:
                yield number, text


def read_classes(path: str) -> list[str]:
    """Class names, one a line (blank lines ignored); class ``i`` is the ``i``-th name."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, name in _lines(path):
        if name in seen:
            raise ListFileError(path, number, f"class {name!r} is named already on line {seen[name]}")
        seen[name] = number
        names.append(name)
    if not names:
        raise ListFileError(path, None, "names no classes")
    return names


_ENTRY = re.compile(r"^(?P<path>.*\S)\s+(?P<label>\S+)$")


def _is_index(label: str) -> bool:
    return label.isascii() and label.isdigit()


def read_list_file(path: str, data_root: str, classes: Optional[Sequence[str]] = None
                   ) -> tuple[list[ListEntry], list[str]]:
    """(entries, classes) of a list file; ``classes=None`` takes them from the list (module docstring).

    Raises :class:`ListFileError` (file and line) for a line without a label, a label outside the
    classes, a clip that does not exist under ``data_root`` and a clip listed twice."""
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"the data root {data_root!r} is not a folder")
    raw: list[tuple[int, str, str]] = []
    for number, text in _lines(path):
        m = _ENTRY.match(text)
        if m is None:
            raise ListFileError(path, number, f"expected 'PATH LABEL' (the label is the last field), got {text!r}")
        raw.append((number, m["path"], m["label"]))
    if not raw:
        raise ListFileError(path, None, "lists no clips")
    if classes is None:
        first_kind = _is_index(raw[0][2])
        for number, _, label in raw:
            if _is_index(label) != first_kind:
                raise ListFileError(path, number, f"label {label!r} is {'a name' if first_kind else 'an index'} "
                                    f"while line {raw[0][0]} gives {'an index' if first_kind else 'a name'}: "
                                    "use one kind, or give the class names (--classes)")
        if first_kind:
            classes = [str(i) for i in range(max(int(label) for _, _, label in raw) + 1)]
        else:
            classes = sorted({label for _, _, label in raw})
    classes = list(classes)
    index = {name: i for i, name in enumerate(classes)}
    entries: list[ListEntry] = []
    seen: dict[str, int] = {}
    for number, clip, label in raw:
        if _is_index(label):
            label_index = int(label)
            if label_index >= len(classes):
                raise ListFileError(path, number, f"label {label_index} is outside the {len(classes)} classes "
                                                  f"(0 to {len(classes) - 1})")
        elif label in index:
            label_index = index[label]
        else:
            raise ListFileError(path, number, f"label {label!r} is not one of the {len(classes)} class names")
        file = os.path.join(data_root, clip)
        if not os.path.isfile(file):
            raise ListFileError(path, number, f"{clip} does not exist under the data root {data_root}")
        key = os.path.realpath(file)
        if key in seen:
            raise ListFileError(path, number, f"{clip} is listed already on line {seen[key]}")
        seen[key] = number
        entries.append(ListEntry(clip, file, label_index, number))
    return entries, classes


def check_disjoint(train: Sequence[ListEntry], train_path: str, evaluation: Sequence[ListEntry],
                   eval_path: str) -> None:
    """Refuse a clip (by real path) that is in both the training and the evaluation list."""
    lines = {os.path.realpath(e.file): e.line for e in train}
    for e in evaluation:
        other = lines.get(os.path.realpath(e.file))
        if other is not None:
            raise ListFileError(eval_path, e.line, f"{e.path} is also in the training list {train_path} "
                                                   f"(line {other})")


def write_list_file(path: str, rows: Sequence[tuple[str, int]]) -> None:
    """Write ``PATH LABEL`` lines (the label an index), atomically; a failed write is one line naming the file."""
    write_text(path, "".join(f"{clip} {label}\n" for clip, label in rows))


# ---------------------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------------------
@dataclass
class Conversion:
    """What a converter wrote: per split the list file and its clip count, the class-name file, and the
    clips it left out (missing: relative paths; unreadable: (path, problem))."""
    out: str
    videos: str
    classes: list[str]
    lists: dict[str, tuple[str, int]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    unreadable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def classes_path(self) -> str:
        return os.path.join(self.out, "classes.txt")

    def report(self) -> list[str]:
        """One line per split (clips written, clips left out with the first few named), then the classes."""
        lines = []
        for split, (path, n) in self.lists.items():
            text = f"{path}: {n} clip{'' if n == 1 else 's'}"
            missing = self.missing.get(split, [])
            if missing:
                shown = ", ".join(missing[:FIRST_FEW]) + (", ..." if len(missing) > FIRST_FEW else "")
                text += f"; {len(missing)} not found under {self.videos}: {shown}"
            bad = self.unreadable.get(split, [])
            if bad:
                shown = "; ".join(f"{p}: {why}" for p, why in bad[:FIRST_FEW]) + ("; ..." if len(bad) > FIRST_FEW
                                                                                  else "")
                text += f"; {len(bad)} unreadable (left out): {shown}"
            lines.append(text)
        lines.append(f"{self.classes_path}: {len(self.classes)} classes")
        return lines


def _finish(conv: Conversion, found: dict[str, list[tuple[str, int]]], check: bool) -> Conversion:
    """Check (optionally) and write the lists and the class names."""
    from ..video import check_video

    if not any(found.values()):
        total = sum(len(v) for v in conv.missing.values())
        raise FileNotFoundError(f"none of the {total} clips were found under {conv.videos}")
    check_output_dir(conv.out, create=True)
    write_text(conv.classes_path, "".join(f"{name}\n" for name in conv.classes))
    for split, rows in found.items():
        if check:
            problems = [(clip, why) for clip, _ in rows
                        if (why := check_video(os.path.join(conv.videos, clip))) is not None]
            bad = {clip for clip, _ in problems}
            rows = [(clip, label) for clip, label in rows if clip not in bad]
            conv.unreadable[split] = problems
        path = os.path.join(conv.out, f"{split}.txt")
        write_list_file(path, rows)
        conv.lists[split] = (path, len(rows))
    return conv


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def _kinetics_clip(videos: str, label: str, youtube_id: str, start: int, end: int) -> tuple[str, bool]:
    """(path relative to ``videos``, found): flat, or in the class's folder (as written or with ``_``)."""
    name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
    for folder in dict.fromkeys(("", label, label.replace(" ", "_"))):
        rel = os.path.join(folder, name) if folder else name
        if os.path.isfile(os.path.join(videos, rel)):
            return rel, True
    return name, False


def _seconds(csv_path: str, line: int, column: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ListFileError(csv_path, line, f"{column} {text!r} is not a number of seconds") from None
    if value != int(value) or value < 0:
        raise ListFileError(csv_path, line, f"{column} {text!r} is not a whole number of seconds >= 0")
    return int(value)


def convert_kinetics(csv_paths: Sequence[str], videos: str, out: str, *, check: bool = False) -> Conversion:
    """Kinetics CSV(s) -> ``out/<split>.txt`` (one per value of the ``split`` column) and ``out/classes.txt``
    (the sorted labels of all the CSVs given). Paths in the lists are relative to ``videos``."""
    if isinstance(csv_paths, str):
        csv_paths = [csv_paths]
    if not os.path.isdir(videos):
        raise FileNotFoundError(f"the video folder {videos!r} does not exist")
    rows: list[tuple[str, int, dict]] = []
    for path in csv_paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such CSV file: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            absent = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise ListFileError(path, 1, f"no column {', '.join(absent)} (a Kinetics CSV has "
                                             f"{','.join(KINETICS_COLUMNS)}; found {','.join(reader.fieldnames or [])})")
            for row in reader:
                line = reader.line_num
                if not (row["label"] or "").strip() or not (row["split"] or "").strip():
                    raise ListFileError(path, line, "the label or the split is empty")
                rows.append((path, line, row))
    classes = sorted({row["label"].strip() for _, _, row in rows})
    index = {name: i for i, name in enumerate(classes)}
    conv = Conversion(out=out, videos=videos, classes=classes)
    found: dict[str, list[tuple[str, int]]] = {}
    for path, line, row in rows:
        label, split = row["label"].strip(), row["split"].strip()
        start = _seconds(path, line, "time_start", row["time_start"])
        end = _seconds(path, line, "time_end", row["time_end"])
        clip, ok = _kinetics_clip(videos, label, row["youtube_id"].strip(), start, end)
        found.setdefault(split, [])
        conv.missing.setdefault(split, [])
        if ok:
            found[split].append((clip, index[label]))
        else:
            conv.missing[split].append(clip)
    return _finish(conv, found, check)


SSV2_FILES = {"labels": "something-something-v2-labels.json",
              "train": "something-something-v2-train.json",
              "validation": "something-something-v2-validation.json"}


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ListFileError(path, e.lineno, f"is not valid JSON ({e.msg})") from None


def convert_ssv2(annotations: str, out: str, *, videos: Optional[str] = None, check: bool = False) -> Conversion:
    """Something-Something v2 JSON files in ``annotations`` -> ``out/train.txt``, ``out/validation.txt`` and
    ``out/classes.txt`` (the templates in index order). Clips are ``{id}.webm`` under ``videos`` (default:
    ``annotations``). A template that is not in the labels file is an error naming the entry."""
    videos = annotations if videos is None else videos
    if not os.path.isdir(annotations):
        raise FileNotFoundError(f"the SSv2 annotation folder {annotations!r} does not exist")
    if not os.path.isdir(videos):
        raise FileNotFoundError(f"the video folder {videos!r} does not exist")
    labels_path = os.path.join(annotations, SSV2_FILES["labels"])
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"no {SSV2_FILES['labels']} in {annotations}")
    labels = _read_json(labels_path)
    if not isinstance(labels, dict):
        raise ListFileError(labels_path, None, "is not a JSON object of template -> index")
    try:
        by_index = {int(i): t for t, i in labels.items()}
    except (TypeError, ValueError):
        raise ListFileError(labels_path, None, "has an index that is not a whole number") from None
    if sorted(by_index) != list(range(len(labels))):
        raise ListFileError(labels_path, None, f"its {len(labels)} indices are not 0 to {len(labels) - 1}, each once")
    classes = [by_index[i] for i in range(len(labels))]
    conv = Conversion(out=out, videos=videos, classes=classes)
    found: dict[str, list[tuple[str, int]]] = {}
    splits = [s for s in ("train", "validation") if os.path.isfile(os.path.join(annotations, SSV2_FILES[s]))]
    if not splits:
        raise FileNotFoundError(f"neither {SSV2_FILES['train']} nor {SSV2_FILES['validation']} is in {annotations}")
    for split in splits:
        path = os.path.join(annotations, SSV2_FILES[split])
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise ListFileError(path, None, "is not a JSON list of clips")
        found[split], conv.missing[split] = [], []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise ListFileError(path, None, f"entry {n} has no 'id' or no 'template'")
            template = str(entry["template"]).replace("[", "").replace("]", "")
            if template not in labels:
                raise ListFileError(path, None, f"entry {n} (id {entry['id']}): template {template!r} is not in "
                                                f"{labels_path}")
            clip = f"{entry['id']}.webm"
            if os.path.isfile(os.path.join(videos, clip)):
                found[split].append((clip, int(labels[template])))
            else:
                conv.missing[split].append(clip)
    return _finish(conv, found, check)


# ---------------------------------------------------------------------------------------------------
# Training and evaluation sets from list files
# ---------------------------------------------------------------------------------------------------
def build_list_train_eval(list_path: str, *, data_root: Optional[str] = None, classes: Optional[str] = None,
                          val_list: Optional[str] = None, num_frames: int = 8, image_size: int = 224, seed: int = 0,
                          val_fraction: Optional[float] = None, skip_bad: bool = False):
    """(training set, evaluation set or ``None``, description) from list files, as
    :func:`~fast_timesformer.train.data.build_train_eval` gives them for a folder.

    ``data_root``: the folder the lists' paths are relative to (default: the training list's folder).
    ``classes``: a class-name file (default: the classes the training list implies). ``val_list``: the
    evaluation list; without one, a seeded class-stratified ``val_fraction`` of the training list is held
    out, as for a folder without ``val/``. The files are scanned as a folder's are."""
    from .data import DEFAULT_VAL_FRACTION, VideoFolder, _folder_transforms, check_entries, stratified_split

    root = os.path.dirname(os.path.abspath(list_path)) if data_root is None else data_root
    names = read_classes(classes) if classes is not None else None
    entries, names = read_list_file(list_path, root, names)
    t_train, t_eval = _folder_transforms(num_frames, image_size)

    def dataset(rows, transform):
        return VideoFolder(root, transform, seed=seed, classes=names, samples=[(e.file, e.label) for e in rows])

    def scanned(data):  # a folder's scan: every file checked, unreadable ones refused or left out (skip_bad)
        data.check_files(skip_bad)
        return data

    if val_list is not None:
        if val_fraction is not None:
            raise ValueError(f"--val-dataset {val_list} is the evaluation set; --val-fraction splits a training "
                             "list given without one")
        held, _ = read_list_file(val_list, root, names)
        check_disjoint(entries, list_path, held, val_list)
        check_entries([(e.file, e.label, "train") for e in entries] + [(e.file, e.label, "eval") for e in held],
                      names, where=list_path)
        train, evalset = scanned(dataset(entries, t_train)), scanned(dataset(held, t_eval))
        return train, evalset, {"eval": "list", "train_list": list_path, "eval_list": val_list, "data_root": root,
                                "train_files": len(train), "eval_files": len(evalset),
                                "skipped": train.skipped + evalset.skipped}
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    check_entries([(e.file, e.label, "train") for e in entries], names, where=list_path)
    whole = scanned(dataset(entries, t_train))
    train_idx, held_idx = stratified_split([label for _, label in whole.samples], fraction, seed)
    train = VideoFolder(root, t_train, seed=seed, classes=names, samples=[whole.samples[i] for i in train_idx])
    train.skipped = whole.skipped
    evalset = None
    if held_idx:
        evalset = VideoFolder(root, t_eval, seed=seed, classes=names, samples=[whole.samples[i] for i in held_idx])
    return train, evalset, {"eval": "held-out" if held_idx else "none", "train_list": list_path, "data_root": root,
                            "val_fraction": fraction, "split_seed": seed, "train_files": len(train_idx),
                            "eval_files": len(held_idx), "skipped": whole.skipped}
