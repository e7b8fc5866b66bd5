"""Training: exact resume, checkpoints, accumulation, the CLI (train / predict), prediction task."""
import json
import os

import pytest
import torch
from helpers import ARGS, MODEL, one_error_line, run_cli

from fast_timesformer.backends.spec import parse_backend_spec
from fast_timesformer.train import checkpoint as ckpt
from fast_timesformer.train.config import TrainConfig
from fast_timesformer.train.trainer import Trainer, _param_groups, lr_at


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(model=MODEL, num_frames=4, image_size=16, train_samples=12, eval_samples=8, batch=4, steps=4,
                lr=3e-3, warmup=1, out_dir=str(tmp_path), progress=False, log_every=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_equals_straight_run(tmp_path):
    """2 steps, checkpoint, a new process-like Trainer resumes, 2 more steps == 4 steps straight: bit for
    bit, with dropout and drop-path on (global RNG restored) and an epoch boundary crossed (3 steps per
    epoch: new data order, evaluation in between)."""
    drop = dict(attn_dropout=0.1, ff_dropout=0.2, drop_path=0.3)
    straight = Trainer(tiny(tmp_path / "a", **drop))
    straight.fit()
    assert straight.step == 4

    first = Trainer(tiny(tmp_path / "b", **drop))
    first.fit(stop_at=2)
    assert first.step == 2
    last = tmp_path / "b" / "last.safetensors"
    assert last.is_file()
    torch.manual_seed(1234)  # whatever happened to the RNG meanwhile must not matter
    resumed = Trainer(tiny(tmp_path / "b", resume=str(last), **drop))
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 4

    a, b = params(straight.module), params(resumed.module)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(sa[pid][key], sb[pid][key]), (pid, key)
    # and dropout did something: without it the result differs
    nodrop = Trainer(tiny(tmp_path / "c"))
    nodrop.fit()
    assert any(not torch.equal(a[k], v) for k, v in params(nodrop.module).items())


def test_resume_refuses_a_different_run(tmp_path):
    t = Trainer(tiny(tmp_path))
    t.fit(stop_at=1)
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        Trainer(tiny(tmp_path, lr=1e-2, resume="auto"))
    fresh = Trainer(tiny(tmp_path / "elsewhere", resume="auto"))  # no checkpoint there: a fresh start
    assert fresh.step == 0


def test_checkpoint_roundtrip_and_atomic_write(tmp_path):
    t = Trainer(tiny(tmp_path))
    t.fit(stop_at=2)
    path = tmp_path / "last.safetensors"
    meta = ckpt.read_metadata(str(path))
    assert meta["step"] == 2 and meta["classes"] == t.classes and meta["config"]["lr"] == 3e-3
    assert meta["extra"]["model_spec"]["class"] == "TimeSformer"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("optim.") and k.endswith(".exp_avg") for k in keys)
    assert "rng.torch" in keys and any(k.startswith("model.blocks.0.") for k in keys)
    # the optimizer state survives a round trip exactly
    opt2 = torch.optim.AdamW(_param_groups(t.module, 0.0), lr=1.0)
    model2 = type(t.module)(**{**t.module.config})
    ckpt.load_checkpoint(str(path), model=model2, optimizer=opt2)
    for k, v in t.module.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])
    s1, s2 = t.optimizer.state_dict(), opt2.state_dict()
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
    for pid in s1["state"]:
        for key, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][key])
    # no temporary file is left behind, and a failing write leaves the old file intact
    files = sorted(os.listdir(tmp_path))
    assert files == [".lock", "last.safetensors", "metrics.jsonl"]  # no evaluation yet, so no best checkpoint
    before = path.read_bytes()
    with pytest.raises(Exception):
        ckpt.atomic_save_file({"bad": torch.zeros(2)[None].expand(3, 2)[:, ::2].t()}, str(path),
                              {"x": object()})  # metadata values must be strings: the write fails
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == files
    # a strict load names the keys that do not fit
    from fast_timesformer.errors import CheckpointMismatchLineError

    other = type(t.module)(**{**t.module.config, "depth": 2})
    with pytest.raises(CheckpointMismatchLineError, match="missing"):
        ckpt.load_checkpoint(str(path), model=other)
    # mis-shaped tensors: one line naming the file and the key (torch's own error is a multi-line RuntimeError)
    wider = type(t.module)(**{**t.module.config, "num_classes": t.module.config["num_classes"] + 1})
    with pytest.raises(CheckpointMismatchLineError, match=r"last\.safetensors: .*head\.weight is") as info:
        ckpt.load_checkpoint(str(path), model=wider)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a fast_timesformer"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        ckpt.read_metadata(str(tmp_path / "plain.safetensors"))


def test_gradient_accumulation_matches_full_batch(tmp_path):
    """2 micro-batches of 2 give the gradient of one batch of 4, at every step: compared when the optimizer
    step is taken. Not the parameters after AdamW: it turns round-off in a zero gradient (the key bias)
    into a full-size step (lr * sign), whatever accumulation does. The runs use plain SGD, a step linear in
    the gradient, so step 2 starts from points within round-off of each other."""
    grads = {}
    for name, accum in (("full", 1), ("acc", 2)):
        t = Trainer(tiny(tmp_path / name, steps=2, accum=accum))
        assert t.micro_batch == 4 // accum
        t.optimizer = torch.optim.SGD(t.module.parameters(), lr=t.cfg.lr)
        names = {p: n for n, p in t.module.named_parameters()}
        grads[name] = seen = []
        t.optimizer.register_step_pre_hook(lambda opt, args, kwargs, seen=seen: seen.append(
            {names[p]: p.grad.clone() for group in opt.param_groups for p in group["params"]}))
        t.fit()
    assert len(grads["full"]) == len(grads["acc"]) == 2
    for full, acc in zip(grads["full"], grads["acc"]):
        for k, g in full.items():
            # float32 summed in another order (4 samples vs 2 + 2). The summands (normed features x
            # (softmax - one-hot) / batch) are O(1) and cancel to gradients <= 0.05, so the error is
            # ~1e-7 absolute (1.5e-7 measured with and without AVX); atol 1e-6 leaves ~7x. A missing
            # 1/accum or a dropped micro-batch is off by ~1e-2.
            torch.testing.assert_close(acc[k], g, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="divisible"):
        Trainer(tiny(tmp_path / "c", accum=3))


def test_grouped_sampler_keeps_groups_and_partitions_like_distributed_sampler():
    from fast_timesformer.train.trainer import GroupedSampler

    data = list(range(26))
    order = list(GroupedSampler(data, num_replicas=1, rank=0, seed=1, group_size=4, drop_last=True))
    assert sorted(order) == data
    for k in range(0, 24, 4):  # every group of 4 stays together, in order
        assert order[k: k + 4] == list(range(order[k], order[k] + 4)) and order[k] % 4 == 0
    ranks = [list(GroupedSampler(data, num_replicas=2, rank=r, seed=1, group_size=4, drop_last=True))
             for r in range(2)]
    assert ranks[0] == order[0::2] and ranks[1] == order[1::2]
    plain = GroupedSampler(data, num_replicas=1, rank=0, seed=1, group_size=1)
    from torch.utils.data import DistributedSampler

    assert list(plain) == list(DistributedSampler(data, num_replicas=1, rank=0, seed=1))


def test_lr_schedule_and_backend_spec():
    lrs = [lr_at(s, 10, 1.0, 2, 0.1) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(
        torch.tensor(7 / 8 * torch.pi)).item()))
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decays after warmup
    assert parse_backend_spec("regular").to_json() == "regular"
    assert parse_backend_spec("time=regular, space=performer").to_json() == {"time": "regular", "space": "performer"}
    with pytest.raises(ValueError, match="step=name"):
        parse_backend_spec("time=,space=performer")


def test_per_step_backend_and_bf16_autocast(tmp_path):
    t = Trainer(tiny(tmp_path, backend="time=regular,space=performer", backend_options={"space.nb_features": 8},
                     amp="bf16", steps=2))
    names = {(m.step, m.backend) for m in t.module.attention_modules()}
    assert names == {("time", "regular"), ("space", "performer")}
    assert {m.cores["performer"].nb_features for m in t.module.attention_modules() if m.step == "space"} == {8}
    out = t.fit()
    assert out["split"] == "eval" and 0 <= out["acc"] <= 1
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Trainer(tiny(tmp_path / "x", amp="fp16"))


def test_temporal_scheme_learns_order_space_only_cannot():
    """Clips made of the same frames in forward and backward order (label = order): divided attention fits
    them; space_only's loss stays at ln 2, since it gets identical input for both members of every pair."""
    import torch.nn.functional as F

    from fast_timesformer.models import TimeSformer
    from fast_timesformer.train.data import MovingShapes

    ds = MovingShapes(8, num_frames=4, image_size=16, noise=0.0, num_classes=2, seed=0)
    x, y = torch.stack([ds[i][0] for i in range(8)]), torch.tensor([ds[i][1] for i in range(8)])
    assert torch.equal(x[0], x[1].flip(0)) and y.tolist() == [0, 1] * 4  # pairs: one base, both orders
    results = {}
    for scheme in ("space_only", "divided_space_time"):
        torch.manual_seed(1)  # leaving the order-invariant start takes 90-290 steps over seeds 0-2
        model = TimeSformer(num_classes=2, num_frames=4, image_size=16, patch_size=4, dim=32, depth=2, heads=4,
                            dim_head=8, mlp_ratio=2.0, drop_path=0.0, scheme=scheme)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(150 if scheme == "space_only" else 500):
            loss = F.cross_entropy(model(x), y)
            if loss.item() < 0.05:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[scheme] = loss.item()
    assert results["space_only"] > 0.69, results        # ln 2 = 0.693: no better than chance
    assert results["divided_space_time"] < 0.1, results  # fits the order


# ---- command line ---------------------------------------------------------------------------------
def test_cli_train_then_predict(tmp_path, capsys):
    av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    from fast_timesformer.cli import main

    root = tmp_path / "videos"
    for cls, value in (("dark", 40), ("bright", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            with av.open(str(root / cls / f"{i}.mp4"), mode="w") as c:
                s = c.add_stream("mpeg4", rate=4)
                s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
                for t in range(6):
                    img = torch.full((32, 32, 3), value + 3 * i + t, dtype=torch.uint8).numpy()
                    for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
    out = tmp_path / "run"
    rc = main(["train", "--dataset", str(root), "--model", "tiny", "--frames", "4", "--image-size", "16",
               "--batch", "2", "--epochs", "2", "--lr", "3e-3", "--out", str(out), "--no-progress",
               "--log-every", "1"])
    assert rc == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"data", "train", "eval"}
    # no val/ folder: one clip of each class is held out, so 2 train clips = 1 step per epoch
    assert [x["step"] for x in lines if x["split"] == "eval"] == [1, 2]  # evaluation each epoch
    capsys.readouterr()
    rc = main(["predict", str(root / "bright" / "0.mp4"), "--checkpoint", str(out / "last.safetensors"),
               "--top-k", "5", "--json"])
    assert rc == 0
    top = json.loads(capsys.readouterr().out)
    assert sorted(x["label"] for x in top) == ["bright", "dark"]  # 2 classes: top-5 gives both
    assert abs(sum(x["probability"] for x in top) - 1) < 1e-4
    assert top[0]["probability"] >= top[1]["probability"]
    with pytest.raises(FileNotFoundError):
        main(["predict", str(root / "missing.mp4"), "--checkpoint", str(out / "last.safetensors")])


def test_cli_rejects_bad_options(tmp_path):
    from fast_timesformer.cli import main

    with pytest.raises(ValueError, match="unknown model"):
        main(["train", "--model", "no_such_model", "--steps", "1", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(ValueError, match="unknown dataset"):
        main(["train", "--dataset", "kinetics-9000", "--steps", "1", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "1", "--steps", "1"])  # one length only


def test_experiment_writes_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from fast_timesformer.train.experiment import SWAPS, run_experiment

    res = run_experiment("cpu", out_dir=str(tmp_path), schemes=["space_only", "divided_space_time"], steps=2,
                         progress=False, train_samples=16, eval_samples=8, batch=4)
    assert [r["scheme"] for r in res["rows"]] == ["space_only", "divided_space_time"]
    for row in res["rows"]:
        assert 0 <= row["acc"] <= 1 and set(row["swaps"]) == {label for label, _, _ in SWAPS}
        assert all(v["acc"] is not None and len(v["draws"]) == 3 for v in row["swaps"].values()), row["swaps"]
    table = (tmp_path / "results.md").read_text()
    assert "`divided_space_time`" in table and "performer-64" in table
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    env = json.loads((tmp_path / "results.json").read_text())["environment"]  # the benchmarks' metadata block
    assert env["versions"]["torch"] == torch.__version__ and env["training_device"] == "cpu" and "git" in env
    with pytest.raises(ValueError, match="unknown scheme"):
        run_experiment("cpu", out_dir=str(tmp_path), schemes=["diagonal"], steps=1)


# ---- future-frame prediction ----------------------------------------------------------------------
def test_future_frame_prediction_trains(tmp_path):
    pytest.importorskip("fast_timesformer.models.generative")
    cfg = tiny(tmp_path, dataset="bouncing", num_target_frames=2, steps=3, train_samples=8, eval_samples=4)
    t = Trainer(cfg)
    assert type(t.module).__name__ == "GenerativeTimeSformer"
    out = t.fit()
    assert out["split"] == "eval" and out["mse"] > 0 and out["copy_last_mse"] > 0
    meta = ckpt.read_metadata(str(tmp_path / "last.safetensors"))
    assert meta["extra"]["task"] == "predict"
    from fast_timesformer.train.inference import load_trained_model

    model, _ = load_trained_model(str(tmp_path / "last.safetensors"))
    x, _ = t.eval_set[0]
    torch.testing.assert_close(model(x[None]), t.module.eval()(x[None]))


# ---- the command line: --no-eval; a used --out folder (refused, --overwrite, --resume auto) ------------
def folder_bytes(folder):
    # the run's files; .lock only records which process holds the folder (see run_folder.py)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def records(path, split=None):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [r for r in rows if split is None or r["split"] == split]


def test_a_fresh_start_in_a_used_folder_is_refused_and_touches_nothing(tmp_path, capsys):
    from fast_timesformer.train.run_folder import EarlierRunError

    out = tmp_path / "run"
    first = ["train", *ARGS, "--steps", "6", "--save-every", "1", "--out", str(out)]
    assert run_cli(first + ["--stop-at", "3"], capsys)[0] == 0  # epoch end at 3: last, previous, best
    before = folder_bytes(out)
    assert sorted(before) == ["best.safetensors", "last.safetensors", "metrics.jsonl", "previous.safetensors"]

    rc, stdout, err = run_cli(first, capsys)  # the same command again, without --resume
    assert rc == 2 and stdout == ""
    assert one_error_line(err) == (
        f"{out} already holds an earlier run (last.safetensors at step 3, previous.safetensors at step 2, "
        "best.safetensors at step 3, metrics.jsonl): --resume auto continues it from step 3; --overwrite starts "
        "this run afresh and replaces those files when it saves its first checkpoint (they stay as they are until "
        "then); or give another --out")
    assert folder_bytes(out) == before  # byte for byte, and nothing added
    # other settings: --resume auto is not offered as if it would work
    rc, _, err = run_cli(first[:-2] + ["--lr", "1e-2", "--out", str(out)], capsys)
    assert rc == 2 and "--resume auto would continue it only with its own settings (these differ: --lr)" in \
        one_error_line(err)
    # from Python: the same refusal (a FileExistsError too), before anything is built
    with pytest.raises(EarlierRunError, match="already holds an earlier run") as info:
        Trainer(tiny(out, model=MODEL, eval_samples=4, steps=6, save_every=1, device="cpu"))
    assert isinstance(info.value, FileExistsError) and len(info.value.files) == 4
    assert folder_bytes(out) == before
    # --resume auto is unchanged: it continues the run
    rc, _, err = run_cli(first + ["--resume", "auto"], capsys)
    assert rc == 0 and err == ""
    assert ckpt.read_metadata(str(out / "last.safetensors"))["step"] == 6
    assert [r["step"] for r in records(out / "metrics.jsonl", "train")] == [1, 2, 3, 4, 5, 6]
    # a finished run: said so, and no --resume hint
    rc, _, err = run_cli(first, capsys)
    assert rc == 2 and "metrics.jsonl): it is complete (step 6 of 6); --overwrite starts" in one_error_line(err)
    # only metrics (no checkpoint): refused too, without a --resume hint that would not continue anything
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 1.0}\n')
    rc, _, err = run_cli(["train", *ARGS, "--steps", "2", "--out", str(bare)], capsys)
    assert rc == 2 and one_error_line(err).startswith(
        f"{bare} already holds an earlier run (metrics.jsonl): it has no checkpoint --resume auto could continue; "
        "--overwrite starts")
    assert (bare / "metrics.jsonl").read_text() == '{"split": "train", "step": 1, "loss": 1.0}\n'
    # --overwrite and --resume contradict each other
    rc, _, err = run_cli(first + ["--overwrite", "--resume", "auto"], capsys)
    assert rc == 2 and one_error_line(err) == ("--overwrite starts a new run and --resume auto continues one: give "
                                               "one of them")


def test_overwrite_replaces_the_earlier_run_at_its_first_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", *ARGS, "--steps", "3", "--save-every", "1", "--out", str(out)], capsys)[0] == 0
    assert ckpt.read_metadata(str(out / "previous.safetensors"))["step"] == 2
    new = ["train", *ARGS, "--steps", "3", "--lr", "1e-2", "--out", str(out)]
    rc, stdout, err = run_cli(new + ["--overwrite", "--stop-at", "2"], capsys)
    assert rc == 0
    assert err == (f"fast-timesformer: --overwrite: {out} holds an earlier run (last.safetensors at step 3, "
                   "previous.safetensors at step 2, best.safetensors at step 3, metrics.jsonl); they stay as they are "
                   "until this run saves its first checkpoint, which replaces them (until then its metrics go to "
                   f"{out / 'metrics.jsonl'}.new)\n")
    # only the new run is left: its last (no evaluation yet, so no best); the earlier previous and best are gone;
    # the metrics are the new run's
    assert sorted(os.listdir(out)) == [".lock", "last.safetensors", "metrics.jsonl"]  # .lock: the run folder's lock
    meta = ckpt.read_metadata(str(out / "last.safetensors"))
    assert meta["step"] == 2 and meta["config"]["lr"] == 1e-2 and meta["config"]["overwrite"] is True
    rows = records(out / "metrics.jsonl")
    assert rows[0]["split"] == "data" and [r["step"] for r in rows[1:]] == [1, 2]
    # it resumes as any run (overwrite is not a setting a resumed run must repeat)
    rc, _, err = run_cli(new + ["--resume", "auto"], capsys)
    assert rc == 0 and err == ""
    assert sorted(os.listdir(out)) == [".lock", "best.safetensors", "last.safetensors", "metrics.jsonl",
                                       "previous.safetensors"]
    assert ckpt.read_metadata(str(out / "best.safetensors"))["step"] == 3
    assert [r["step"] for r in records(out / "metrics.jsonl", "train")] == [1, 2, 3]
    # a first checkpoint at an epoch end: the best one (written first, to its pending twin) replaces the earlier too
    rc, _, err = run_cli(["train", *ARGS, "--steps", "3", "--lr", "5e-3", "--out", str(out), "--overwrite"], capsys)
    assert rc == 0 and err.count("\n") == 1
    assert sorted(os.listdir(out)) == [".lock", "best.safetensors", "last.safetensors", "metrics.jsonl"]
    for name in ("best", "last"):
        meta = ckpt.read_metadata(str(out / f"{name}.safetensors"))
        assert meta["step"] == 3 and meta["config"]["lr"] == 5e-3
    assert [r["split"] for r in records(out / "metrics.jsonl")] == ["data", "train", "train", "train", "eval"]
    # --overwrite into an empty folder is a plain fresh start
    rc, _, err = run_cli(["train", *ARGS, "--steps", "1", "--out", str(tmp_path / "new"), "--overwrite"], capsys)
    assert rc == 0 and err == ""
    assert sorted(os.listdir(tmp_path / "new")) == [".lock", "best.safetensors", "last.safetensors", "metrics.jsonl"]


def test_an_overwrite_that_fails_before_its_first_checkpoint_loses_nothing(tmp_path, monkeypatch, capsys):
    """A crash of an --overwrite run before it saves anything leaves the earlier run byte for byte, loadable and
    resumable; an interrupt before its first step saves nothing; an interrupt after a step saves, replacing."""
    import signal

    from fast_timesformer.errors import TrainingInterrupted

    out = tmp_path / "run"
    kw = dict(model=MODEL, eval_samples=4, device="cpu", steps=6, save_every=1)
    Trainer(tiny(out, **kw)).fit(stop_at=4)  # last 4, previous 3, best 3
    before = folder_bytes(out)
    capsys.readouterr()

    class PowerCut(Exception):
        pass

    new = tiny(out, **{**kw, "lr": 1e-2, "save_every": 0, "overwrite": True})  # first checkpoint: step 3
    t = Trainer(new)
    log = t._log

    def crash_at_step_2(record):
        if record.get("split") == "train" and record["step"] == 2:
            raise PowerCut
        log(record)

    monkeypatch.setattr(t, "_log", crash_at_step_2)
    with pytest.raises(PowerCut):
        t.fit()
    after = folder_bytes(out)
    assert after.pop("metrics.jsonl.new")  # the new run's records so far, beside the earlier ones
    assert after == before
    model, meta = __import__("fast_timesformer.train.inference", fromlist=["x"]).load_trained_model(
        str(out / "last.safetensors"))
    assert meta["step"] == 4 and meta["config"]["lr"] == 3e-3
    resumed = Trainer(tiny(out, **kw, resume="auto"))
    assert resumed.step == 4 and resumed.resumed_from == str(out / "last.safetensors")

    # an interrupt before the first step: nothing is saved, the earlier run stays
    with monkeypatch.context() as m:
        t = Trainer(new)
        # the signal comes inside the training loop, as its first epoch's batches are drawn
        m.setattr(t, "train_batches", lambda *a, draw=t.train_batches: (os.kill(os.getpid(), signal.SIGINT),
                                                                          draw(*a))[1])
        with pytest.raises(TrainingInterrupted) as info:
            t.fit()
    assert str(info.value) == (f"interrupted by SIGINT before the first step: nothing was saved, and the earlier "
                               f"run's files in {out} are unchanged (--overwrite replaces them only when this run "
                               "saves a checkpoint)")
    after = folder_bytes(out)
    assert [r["split"] for r in records(out / "metrics.jsonl.new")] == ["data"]  # the pending twin, started afresh
    after.pop("metrics.jsonl.new")
    assert after == before

    # an interrupt after step 2 saves there, and that first checkpoint replaces the earlier run
    with monkeypatch.context() as m:
        t = Trainer(new)
        m.setattr(t, "_log", lambda record, log=t._log: (log(record), record.get("split") == "train"
                                                         and record["step"] == 2
                                                         and os.kill(os.getpid(), signal.SIGINT)))
        with pytest.raises(TrainingInterrupted, match="at step 2 of 6: checkpoint saved"):
            t.fit()
    assert sorted(os.listdir(out)) == [".lock", "last.safetensors", "metrics.jsonl"]
    assert ckpt.read_metadata(str(out / "last.safetensors"))["config"]["lr"] == 1e-2
    assert [r["step"] for r in records(out / "metrics.jsonl", "train")] == [1, 2]


def test_no_eval_runs_no_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["train", *ARGS, "--steps", "6", "--out", str(out), "--no-eval"], capsys)
    assert rc == 0 and err == ""
    rows = records(out / "metrics.jsonl")
    assert rows[0]["split"] == "data" and rows[0]["evaluation"] == "none (--no-eval)"
    assert {r["split"] for r in rows} == {"data", "train"}  # not after epochs 1 and 2, not at the end either
    assert "best.safetensors" not in os.listdir(out)
    summary, where = stdout.splitlines()
    assert json.loads(summary)["split"] == "train" and "acc" not in json.loads(summary)
    assert where == f"checkpoints in {out}, metrics in {out / 'metrics.jsonl'}; no evaluation (--no-eval)"
    # without it: each epoch (3 steps) and the end; from Python, eval_each_epoch=False: the end only
    rc, stdout, _ = run_cli(["train", *ARGS, "--steps", "6", "--out", str(tmp_path / "eval")], capsys)
    assert [r["step"] for r in records(tmp_path / "eval" / "metrics.jsonl", "eval")] == [3, 6]
    assert json.loads(stdout.splitlines()[0])["split"] == "eval"
    t = Trainer(tiny(tmp_path / "end", model=MODEL, eval_samples=4, steps=6, eval_each_epoch=False))
    t.fit()
    assert [r["step"] for r in records(tmp_path / "end" / "metrics.jsonl", "eval")] == [6]
    assert records(tmp_path / "end" / "metrics.jsonl")[0]["evaluation"] == "at the end"


def test_experiment_refuses_a_used_folder_and_overwrite_replaces_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fast_timesformer.train.experiment import run_experiment
    from fast_timesformer.train.run_folder import EarlierRunError

    small = dict(schemes=["space_only"], steps=1, progress=False, train_samples=8, eval_samples=4, batch=4, draws=1)
    run_experiment("cpu", out_dir=str(tmp_path), **small)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(EarlierRunError) as info:
        run_experiment("cpu", out_dir=str(tmp_path), **small)
    assert str(info.value) == (
        f"{tmp_path} already holds an earlier experiment (results.json, results.md, accuracy.png; runs/space_only: "
        "last.safetensors at step 1, best.safetensors at step 1, metrics.jsonl): --overwrite replaces it (each "
        "scheme's run when its new run saves its first checkpoint, the results at the end); or give another --out")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    res = run_experiment("cpu", out_dir=str(tmp_path), overwrite=True, **{**small, "steps": 2})
    assert res["settings"]["steps"] == 2
    assert ckpt.read_metadata(str(tmp_path / "runs" / "space_only" / "last.safetensors"))["step"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["steps"] == 2
