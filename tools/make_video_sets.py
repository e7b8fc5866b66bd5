"""Write small synthetic video sets shaped as Kinetics, Something-Something v2 and a plain list file keeps
them, for trying the data recipes of docs/train.md end to end (seconds on a CPU; PyAV writes the clips).

    python tools/make_video_sets.py OUT

* ``OUT/kinetics``: ``train.csv`` and ``validate.csv`` (``label,youtube_id,time_start,time_end,split``) and
  ``videos/`` with ``{youtube_id}_{start:06d}_{end:06d}.mp4`` clips, some flat, some in class folders, and
  ``--missing`` of them absent, as in every public copy.
* ``OUT/ssv2``: ``something-something-v2-{labels,train,validation}.json`` and ``videos/{id}.webm``, with
  ``--missing`` clips absent.
* ``OUT/own``: ``clips/`` (names with spaces), ``train.txt`` / ``val.txt`` (labels as names) and
  ``classes.txt``.

A clip's class is visible: each class has its own colour, and the clip brightens over time.
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

KINETICS = ["abseiling", "air drumming", "archery", "arm wrestling", "baking cookies"]
SSV2 = ["Holding [something]", "Pushing [something] from left to right", "Putting [something] on a surface",
        "Turning [something] upside down"]


def write_clip(path: str, label: int, seed: int, *, codec: str = "mpeg4", frames: int = 16, h: int = 48,
               w: int = 64) -> None:
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = np.array([(60 * label) % 200 + 40, (90 * label + 80) % 200 + 40, (130 * label + 30) % 200 + 40])
    with av.open(path, mode="w") as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = colour[None, None] * (0.6 + 0.4 * t / frames) + rng.normal(0, 8, (h, w, 3))
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def kinetics(root: str, per_class: int, missing: int) -> None:
    rows, k = [], 0
    for label, name in enumerate(KINETICS):
        for i in range(per_class):
            split = "validate" if i < max(1, per_class // 4) else "train"
            yid, start = f"{name[:3]}{k:08d}", 10 * i
            rows.append((name, yid, start, start + 10, split, label))
            k += 1
    absent = {rows[j][1] for j in range(0, len(rows), max(1, len(rows) // max(missing, 1)))[:missing]}
    for n, (name, yid, t0, t1, _, label) in enumerate(rows):
        if yid in absent:
            continue
        folder = name.replace(" ", "_") if n % 2 else ""  # some flat, some in class folders
        write_clip(os.path.join(root, "videos", folder, f"{yid}_{t0:06d}_{t1:06d}.mp4"), label, n)
    for split, file in (("train", "train.csv"), ("validate", "validate.csv")):
        with open(os.path.join(root, file), "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
            out.writerows([r[:5] + (0,) for r in rows if r[4] == split])


def ssv2(root: str, per_class: int, missing: int) -> None:
    os.makedirs(root, exist_ok=True)
    labels = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(SSV2)}
    with open(os.path.join(root, "something-something-v2-labels.json"), "w") as f:
        json.dump(labels, f, indent=1)
    entries = {"train": [], "validation": []}
    n = 0
    for label, template in enumerate(SSV2):
        for i in range(per_class):
            split = "validation" if i < max(1, per_class // 4) else "train"
            entries[split].append({"id": str(1000 + n), "label": template.replace("[something]", "a cup").lower(),
                                   "template": template, "placeholders": ["a cup"]})
            n += 1
    everything = entries["train"] + entries["validation"]
    absent = {e["id"] for e in everything[1::max(1, len(everything) // max(missing, 1))][:missing]}
    for e in everything:
        if e["id"] not in absent:
            write_clip(os.path.join(root, "videos", f"{e['id']}.webm"), SSV2.index(e["template"]), int(e["id"]),
                       codec="libvpx")
    for split, items in entries.items():
        with open(os.path.join(root, f"something-something-v2-{split}.json"), "w") as f:
            json.dump(items, f, indent=1)


def own(root: str, per_class: int) -> None:
    names = ["dark_red", "bright_green", "blue"]  # a label is the last field: no spaces in names
    with open(os.path.join(_mk(root), "classes.txt"), "w") as f:
        f.writelines(f"{c}\n" for c in names)
    lines = {"train": [], "val": []}
    for label, name in enumerate(names):
        for i in range(per_class):
            rel = f"clips/{name} take {i}.mp4"
            write_clip(os.path.join(root, rel), label, 100 * label + i)
            lines["val" if i == 0 else "train"].append(f"{rel} {name}")
    for split, rows in lines.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n\n")


def _mk(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--missing", type=int, default=3, help="clips absent from the Kinetics and SSv2 sets")
    args = ap.parse_args(argv)
    kinetics(os.path.join(args.out, "kinetics"), args.per_class, args.missing)
    ssv2(os.path.join(args.out, "ssv2"), args.per_class, args.missing)
    own(os.path.join(args.out, "own"), max(args.per_class // 2, 2))
    print(f"wrote {args.out}/kinetics, {args.out}/ssv2 and {args.out}/own")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
