"""Non-finite numbers never pass silently (issue 20, family 1): check_finite, predict on NaN or inf weights
and on logits that overflow, checkpoints with non-finite weights never written nor resumed from, and a
diverging run stopped at its first non-finite loss or gradient."""
import json
import os

import pytest
import torch
from helpers import ARGS, run_cli, tiny_run
from safetensors import safe_open
from safetensors.torch import save_file

from fast_timesformer import check_finite
from fast_timesformer.errors import NonFiniteError
from fast_timesformer.train import checkpoint as ckpt
from fast_timesformer.train.trainer import Trainer


def rewrite(src, dst, **values):
    """A copy of checkpoint ``src`` with model tensors filled: ``values`` maps a tensor name (dots as
    underscores) to the value every element gets."""
    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for name, value in values.items():
        key = "model." + name.replace("_", ".")
        tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint at step 2 of a 4-step run on moving shapes, and a video to predict."""
    av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    tmp = tmp_path_factory.mktemp("trained")
    Trainer(tiny_run(tmp / "run", steps=4)).fit(stop_at=2)
    video = tmp / "clip.mp4"
    with av.open(str(video), mode="w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
        for t in range(6):
            img = torch.full((16, 16, 3), 40 + 20 * t, dtype=torch.uint8).numpy()
            for p in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return tmp / "run" / "last.safetensors", video


# ---- the documented check -----------------------------------------------------------------------------
def test_check_finite_names_what_and_where():
    check_finite(torch.ones(3), "x")
    check_finite(torch.tensor([1, 2]), "integers are always finite")
    with pytest.raises(NonFiniteError, match=r"^the logits is not finite: NaN$"):
        check_finite(torch.tensor([1.0, float("nan")]), "the logits")
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(NonFiniteError) as e:
        check_finite(model, "the model")
    assert str(e.value) == "the model is not finite: inf in 1.bias" and e.value.names == ["1.bias"]
    grads = {"a": None, "b": torch.tensor([float("-inf")]), "c": torch.tensor([float("nan")])}
    with pytest.raises(NonFiniteError, match=r"^grads is not finite: inf in b, NaN in c$"):
        check_finite(grads, "grads")


# ---- predict ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("as_json", [False, True])
def test_predict_refuses_non_finite_weights_in_one_line(trained, tmp_path, capsys, value, as_json):
    good, video = trained
    bad = rewrite(good, tmp_path / "bad.safetensors", head_weight=value)
    rc, out, err = run_cli(["predict", str(video), "--checkpoint", str(bad)] + (["--json"] if as_json else []),
                           capsys)
    kind = "NaN" if value != value else "inf"
    assert rc == 2 and out == ""
    assert err == (f"fast-timesformer: error: {bad}: the checkpoint's weights are not finite ({kind} in "
                   "head.weight); it cannot be used\n")


def test_predict_refuses_logits_that_overflow(trained, tmp_path, capsys):
    good, video = trained
    bad = rewrite(good, tmp_path / "huge.safetensors", head_weight=3e38, head_bias=3e38)  # finite weights
    rc, out, err = run_cli(["predict", str(video), "--checkpoint", str(bad), "--json"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"fast-timesformer: error: {bad}: the model's output for {video} is not finite")
    rc, out, _ = run_cli(["predict", str(video), "--checkpoint", str(good), "--json"], capsys)
    assert rc == 0 and len(json.loads(out)) == 4  # the good checkpoint still predicts, in valid JSON


def test_predict_on_a_folder_says_it_is_a_folder(trained, tmp_path, capsys):
    good, _ = trained
    rc, out, err = run_cli(["predict", str(tmp_path), "--checkpoint", str(good)], capsys)
    assert rc == 2 and out == "" and err == f"fast-timesformer: error: {tmp_path}: is a folder, not a video file\n"


def test_a_foreign_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    from fast_timesformer import TimeSformer

    model = TimeSformer(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2)
    state = model.state_dict()
    state["head.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    torch.save({"model_state": state}, tmp_path / "release.pth")  # the official release layout
    with pytest.raises(NonFiniteError) as e:
        TimeSformer.from_pretrained(tmp_path / "release.pth", heads=2)
    assert str(e.value) == (f"{tmp_path / 'release.pth'}: the checkpoint's weights are not finite (NaN in head.bias); "
                            "it cannot be used")


# ---- checkpoints ----------------------------------------------------------------------------------
def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "last.safetensors"
    ckpt.save_checkpoint(str(path), model=model, step=1)
    before = path.read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"last.safetensors: not written: the model's weights are not finite "
                                             r"\(NaN in weight\)$"):
        ckpt.save_checkpoint(str(path), model=model, step=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.safetensors"]


def test_resume_from_a_checkpoint_with_non_finite_weights_is_refused(trained, tmp_path):
    good, _ = trained
    bad = rewrite(good, tmp_path / "bad.safetensors", head_bias=float("nan"))
    with pytest.raises(NonFiniteError) as e:
        Trainer(tiny_run(tmp_path / "run", steps=4, resume=str(bad))).fit()
    assert str(e.value) == (f"{bad}: the checkpoint's weights are not finite (NaN in head.bias); it cannot be "
                            "used")


# ---- a diverging run ----------------------------------------------------------------------------------
def test_a_diverging_run_stops_at_its_first_non_finite_loss(tmp_path, capsys):
    # the run: --lr 1e12 without clipping went on with a NaN loss, reported "acc 0.5", exited 0 and
    # saved a NaN best.safetensors; here the step-1 update makes step 2's loss NaN
    rc, out, err = run_cli(["train", *ARGS, "--warmup", "0", "--lr", "1e12", "--clip-grad", "0", "--steps", "6",
                            "--save-every", "1", "--out", str(tmp_path)], capsys)
    last = tmp_path / "last.safetensors"
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err == (f"fast-timesformer: error: training stopped at step 2: the loss is not finite (NaN); no checkpoint "
                   f"was written for it and the newest checkpoint, {last} (step 1), is the last finite one (a lower "
                   "--lr, --clip-grad or --warmup may help)\n")
    assert sorted(os.listdir(tmp_path)) == [".lock", "last.safetensors", "metrics.jsonl"]  # no best, no NaN file
    with safe_open(str(last), "pt") as f:
        check_finite({k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}, str(last))
        assert json.loads(f.metadata()["fast_timesformer"])["step"] == 1
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1]  # the NaN step is never logged


def test_non_finite_gradients_stop_the_run_naming_them(tmp_path):
    t = Trainer(tiny_run(tmp_path, steps=3, clip_grad=None))
    t.module.head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteError) as e:
        t.fit()
    assert str(e.value).startswith("training stopped at step 1: the gradients are not finite (inf in head.weight); "
                                   "no checkpoint was written for it and this run saved no checkpoint")
    assert not (tmp_path / "last.safetensors").exists()
    assert all(bool(torch.isfinite(p).all()) for p in t.module.parameters())  # the optimizer step never ran
