"""Names that tell the truth (issue 20, family 5): model arguments, backend options and scheme options are
each recognised where they belong, with the close match and its kind; every bench filter value is checked
against its registry; a dropout or drop-path out of range is refused where the model is built."""
import pytest
from helpers import run_cli

from fast_timesformer import DividedAttention, GenerativeTimeSformer, TimeSformer
from fast_timesformer.errors import UnknownNameError

TINY = dict(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2)
GEN = dict(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1, depth=1, heads=2, dim_head=8)


@pytest.mark.parametrize("make,ends", [
    (lambda: TimeSformer(**TINY, hedas=3), "Did you mean the TimeSformer argument 'heads'?"),
    (lambda: GenerativeTimeSformer(**GEN, dpeth=1), "Did you mean the GenerativeTimeSformer argument 'depth'?"),
    (lambda: TimeSformer(**TINY, backend="performer", nb_feature=8),
     "Did you mean the performer backend option 'nb_features'?"),
    (lambda: TimeSformer(**TINY, backend={"space": ("performer", {"nb_feature": 8})}),
     "Did you mean the performer backend option 'nb_features'?"),
    (lambda: TimeSformer(**TINY, scheme="neighborhood", window=(1, 3, 3)),
     "'window' is a neighborhood scheme option, not a TimeSformer argument or regular backend option: pass it as "
     "a neighborhood scheme option"),
    (lambda: TimeSformer(**TINY, scheme="neighborhood", scheme_options={"windw": (1, 3, 3)}),
     "Did you mean the neighborhood scheme option 'window'?"),
    (lambda: TimeSformer(**TINY, scheme="neighborhood", scheme_options={"heads": 2}),
     "'heads' is a TimeSformer argument, not a neighborhood scheme option: pass it as a TimeSformer argument"),
])
def test_each_kind_of_argument_is_recognised_where_it_belongs(make, ends):
    with pytest.raises(UnknownNameError) as e:
        make()
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(ends), msg
    assert "unknown regular option" not in msg  # the old message blamed the backend for a model argument


def test_a_model_argument_typo_on_the_command_line(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--model", '{"dim": 16, "depth": 1, "hedas": 2}', "--steps", "1",
                          "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("fast-timesformer: error: unknown TimeSformer argument or backend option 'hedas'")
    assert err.rstrip().endswith("Did you mean the TimeSformer argument 'heads'?")


@pytest.mark.parametrize("kw", [dict(drop_path=-0.1), dict(drop_path=1.5), dict(attn_dropout=-0.5),
                                dict(ff_dropout=1.0), dict(ff_dropout=float("nan")), dict(drop_path=True)])
def test_rates_out_of_range_are_refused_at_construction(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=rf"^{name} must be a probability in \[0, 1\), got "):
        TimeSformer(**TINY, **kw)  # depth 1: the last block's drop-path rate is the whole value
    if name != "drop_path":
        with pytest.raises(ValueError, match=rf"^{name} must be a probability"):
            GenerativeTimeSformer(**GEN, **kw)
    with pytest.raises(ValueError, match=r"^attn_dropout must be a probability"):
        DividedAttention(16, heads=2, dim_head=8, attn_dropout=2.0)


# ---- bench ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value,close", [("--backends", "regualr", "regular"),
                                                ("--schemes", "divided", "divided_space_time"),
                                                ("--impls", "our", "ours"), ("--modes", "fwdbwd", "fwd+bwd"),
                                                ("--groups", "sweeps", "sweep")])
def test_every_bench_filter_value_is_checked_with_the_close_match(capsys, option, value, close):
    rc, out, err = run_cli(["bench", "--suite", "cpu", option, value, "--list"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert f"unknown {option} value {value!r}" in err and err.rstrip().endswith(f"Did you mean {close!r}?")


def test_bench_refuses_an_out_that_holds_results_without_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text('{"key": "x"}\n')
    rc, _, err = run_cli(["bench", "--suite", "tiny", "--limit", "1", "--out", str(tmp_path)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "--resume" in err and "--overwrite" in err and str(tmp_path) in err
    assert (tmp_path / "results.jsonl").read_text() == '{"key": "x"}\n'
