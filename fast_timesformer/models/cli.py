"""``fast-timesformer models``: the registered model configurations and the five schemes."""
from __future__ import annotations


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def cmd_models(args) -> int:
    import torch

    from ..schemes import get_scheme, list_schemes
    from ..tables import format_table
    from .registry import create_model, list_models, model_config
    from .timesformer import count_parameters

    schemes = [args.scheme] if args.scheme else list_schemes()
    for s in schemes:
        get_scheme(s)  # an unknown name raises UnknownNameError: one line, exit 2 from the console
    rows = []
    for name in list_models(args.pattern):
        cfg = model_config(name)
        row = {"name": name, "frames": cfg["num_frames"], "image": cfg["image_size"], "patch": cfg["patch_size"],
               "dim": cfg["dim"], "depth": cfg["depth"], "heads": cfg["heads"]}
        for s in schemes:
            with torch.device("meta"):  # no memory, no init cost
                row[get_scheme(s).short] = _millions(count_parameters(create_model(name, scheme=s)))
        rows.append(row)
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 1
    print(format_table(rows, list(rows[0])))
    print()
    print(format_table([{"scheme": s, "short": get_scheme(s).short, "steps": ", ".join(get_scheme(s).step_names),
                         "description": get_scheme(s).description} for s in schemes],
                       ["scheme", "short", "steps", "description"]))
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered model configurations and parameter counts "
                                             "per scheme")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*base*'")
    p.add_argument("--scheme", default=None, help="count parameters for this scheme only")
    p.set_defaults(func=cmd_models)
