"""``fast-timesformer data kinetics | ssv2``: convert a data set's annotations into list files."""
from __future__ import annotations

__all__ = ["add_subcommands"]


def _print_report(conv, check: bool) -> None:
    for line in conv.report():
        print(line)
    if not check:
        print("(clips found, not read: --check reads every clip's header as the training scan does)")
    splits = list(conv.lists)
    train = next((s for s in splits if s == "train"), splits[0])
    cmd = (f"fast-timesformer train --dataset {conv.lists[train][0]} --data-root {conv.videos} "
           f"--classes {conv.classes_path}")
    others = [s for s in splits if s != train]
    if others:
        cmd += f" --val-dataset {conv.lists[others[0]][0]}"
    print(f"train with: {cmd}")


def cmd_kinetics(args) -> int:
    from ..outputs import check_output_dir
    from .formats import convert_kinetics

    check_output_dir(args.out)  # a file, a read-only place: one line before the annotations are read

    conv = convert_kinetics(args.csv, args.videos, args.out, check=args.check)
    _print_report(conv, args.check)
    return 0


def cmd_ssv2(args) -> int:
    from ..outputs import check_output_dir
    from .formats import convert_ssv2

    check_output_dir(args.out)  # a file, a read-only place: one line before the annotations are read

    conv = convert_ssv2(args.annotations, args.out, videos=args.videos, check=args.check)
    _print_report(conv, args.check)
    return 0


def add_subcommands(sub) -> None:
    d = sub.add_parser("data", help="convert Kinetics CSVs or Something-Something v2 JSON into list files",
                       description="Write list files (one 'PATH LABEL' a line) and classes.txt for "
                                   "'fast-timesformer train --dataset LIST --data-root VIDEOS --classes NAMES'. "
                                   "Clips that are not found are left out and reported.")
    formats = d.add_subparsers(dest="format", required=True)
    k = formats.add_parser("kinetics", help="Kinetics-400/600/700 CSV(s): label,youtube_id,time_start,time_end,split")
    k.add_argument("csv", nargs="+", help="one or more CSVs (e.g. train.csv validate.csv); one list per split")
    k.add_argument("--videos", required=True, help="folder of {youtube_id}_{start:06d}_{end:06d}.mp4 clips, "
                                                   "flat or one folder per class")
    k.add_argument("--out", required=True, help="folder for <split>.txt and classes.txt")
    k.add_argument("--check", action="store_true", help="read every found clip's header as the training scan "
                                                        "does; unreadable clips are left out and reported")
    k.set_defaults(func=cmd_kinetics)
    s = formats.add_parser("ssv2", help="Something-Something v2: the labels, train and validation JSON files")
    s.add_argument("annotations", help="folder holding something-something-v2-{labels,train,validation}.json")
    s.add_argument("--videos", default=None, help="folder of {id}.webm clips (default: the annotation folder)")
    s.add_argument("--out", required=True, help="folder for train.txt, validation.txt and classes.txt")
    s.add_argument("--check", action="store_true", help="read every found clip's header as the training scan "
                                                        "does; unreadable clips are left out and reported")
    s.set_defaults(func=cmd_ssv2)

