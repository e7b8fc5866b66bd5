"""explain: the recording backend's probabilities, attention rollout against a hand computation, the
backend swap and restore, the command line (train and Hugging Face checkpoints, bad input), and a
trained model's rollout on moving shapes."""
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from timesformer_reference import _cls_rule, _linear, _ln, _mlp, attention, embed, group_ids

from fast_timesformer import TimeSformer, TokenGroups
from fast_timesformer.attention import DividedAttention
from fast_timesformer.explain import clip_layout, clip_rollout, explain_clip, record_attention, save_explanation
from fast_timesformer.schemes import SCHEMES, Scheme, Step, list_schemes

# the partition schemes: the references below know groups only, and the recording backend refuses the steps
# of a mask-defined scheme (neighborhood) with a reason
PARTITIONS = [s for s in list_schemes() if all(g.mask is None for g in SCHEMES[s].token_groups(2, 2, 2))]
CASES = [(s, "official") for s in PARTITIONS] + [("divided_space_time", "global"),
                                                     ("divided_space_time", "per_group"),
                                                     ("space_only", "per_group")]


def tiny(scheme, cls_mode="official", *, dtype=torch.float64, std=0.5, seed=0, **kw):
    """2 blocks, 2 frames of a 2x2 patch grid (4 patches), random weights large enough that attention is
    far from uniform and every <step>_fc passes something on."""
    torch.manual_seed(seed)
    cfg = dict(num_classes=3, num_frames=2, image_size=4, patch_size=2, dim=8, depth=2, heads=2, drop_path=0.0)
    cfg.update(kw)
    model = TimeSformer(scheme=scheme, cls_mode=cls_mode, **cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def clip(model, seed=1, dtype=torch.float64):
    f, (h, w) = model.num_frames, model.image_size
    return torch.randn(1, f, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---- the recorded probabilities --------------------------------------------------------------------
def _layer_inputs(model, video):
    """The tokens each DividedAttention layer attended over, in call order (forward hooks, regular backend):
    its input after the block's pre-norm, which the block hands to the layer as ``norm=``."""
    seen = []

    def hook(mod, args, kwargs, out):
        norm = kwargs.get("norm")
        seen.append((mod, (args[0] if norm is None else norm(args[0])).detach()))

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if isinstance(m, DividedAttention)]
    try:
        with torch.no_grad():
            model(video)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _softmax_rows(layer, x, queries, keys):
    """Per head, softmax(q_i . k_j * scale) over ``keys`` for each query token index: (b, h, |q|, |k|),
    float64, the textbook formula on the layer's own projection."""
    qkv = (x.double() @ layer.qkv.weight.double().T + layer.qkv.bias.double()).unflatten(-1, (3, layer.heads, -1))
    q, k = qkv[:, queries, 0].transpose(1, 2), qkv[:, keys, 1].transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) * layer.scale, -1)


@pytest.mark.parametrize("scheme,cls_mode", CASES)
def test_recorded_rows_sum_to_one_and_match_the_reference_softmax(scheme, cls_mode):
    model = tiny(scheme, cls_mode)
    video = clip(model)
    inputs = _layer_inputs(model, video)
    with torch.no_grad():
        expected = model(video)
    out, records = record_attention(model, video)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)  # exact backend: same logits (float64)
    assert len(records) == len(inputs) == model.config["depth"] * len(model.attention_steps)
    for rec, (layer, x) in zip(records, inputs):
        assert rec.layer[1] == layer.step
        # float64 throughout: sums of <= 5 probabilities are 1 to rounding (~1e-16)
        torch.testing.assert_close(rec.probs.sum(-1), torch.ones_like(rec.probs.sum(-1)), rtol=0, atol=1e-12)
        pre = [0] if rec.num_prefix else []
        for g, members in enumerate(rec.groups.index().tolist()):
            tokens = [1 + j for j in members]
            ref = _softmax_rows(layer, x, tokens, pre + tokens)
            torch.testing.assert_close(rec.probs[:, g], ref, rtol=0, atol=1e-12)
            if rec.cls == "per_group":
                torch.testing.assert_close(rec.cls_probs[:, g], _softmax_rows(layer, x, [0], pre + tokens),
                                           rtol=0, atol=1e-12)
        if rec.cls == "global":
            torch.testing.assert_close(rec.cls_probs, _softmax_rows(layer, x, [0], list(range(x.shape[1]))),
                                       rtol=0, atol=1e-12)
        assert rec.cls == _cls_rule(cls_mode, layer.step)


def test_float32_rows_sum_to_one():
    model = tiny("axial", dtype=torch.float32, std=0.3)
    _, records = record_attention(model, clip(model, dtype=torch.float32))
    for rec in records:  # float32 softmax of a few terms: the sum is 1 within a few ulps (1.2e-7 each)
        torch.testing.assert_close(rec.probs.sum(-1), torch.ones_like(rec.probs.sum(-1)), rtol=0, atol=1e-6)


# ---- rollout against a hand computation ------------------------------------------------------------
def _softmax_dict(scores: dict) -> dict:
    top = max(scores.values())
    e = {j: math.exp(s - top) for j, s in scores.items()}
    z = sum(e.values())
    return {j: v / z for j, v in e.items()}


@torch.no_grad()
def hand_rollout(model, video, ids_of=group_ids):
    """The rollout written out with loops over tokens (float64): per step and head the softmax row of every
    query token over the tokens it meets (groups from each token's coordinates, CLS rules per step), heads
    averaged, 0.5 A + 0.5 I, rows renormalised, R <- A' R; the tokens advance as the model computes them.
    Returns (CLS share, patch shares (f, gh, gw))."""
    patches, cls = embed(model, video.double())  # (1, f, n, D), (1, 1, D)
    f, n = patches.shape[1], patches.shape[2]
    gh, gw = model.grid
    frame_independent = model.scheme.frame_independent and model.cls_mode == "official"
    seqs = [torch.cat([cls, patches[:, t]], 1) for t in range(f)] if frame_independent else \
        [torch.cat([cls, patches.flatten(1, 2)], 1)]
    fs = 1 if frame_independent else f
    rows = []
    for x in seqs:
        size = x.shape[1]
        m = size - 1
        r = [[1.0 if i == j else 0.0 for j in range(size)] for i in range(size)]
        for blk in model.blocks:
            for step, norm, attn, fc in blk.attention_layers():
                rule = _cls_rule(model.cls_mode, step.name)
                xn = _ln(x, norm)
                qkv = _linear(xn, attn.qkv).view(size, 3, attn.heads, attn.dim_head)
                ids = ids_of(step.name, fs, gh, gw).tolist()
                heads = attn.heads
                a = [[0.0] * size for _ in range(size)]
                for h in range(heads):
                    def row(i, keys):
                        return _softmax_dict({j: float(qkv[i, 0, h] @ qkv[j, 1, h]) * attn.scale for j in keys})

                    for i in range(1, size):
                        members = [1 + j for j in range(m) if ids[j] == ids[i - 1]]
                        keys = members if rule == "exclude" else [0] + members
                        for j, p in row(i, keys).items():
                            a[i][j] += p / heads
                    if rule == "per_group":
                        groups = sorted(set(ids))
                        for g in groups:
                            members = [1 + j for j in range(m) if ids[j] == g]
                            for j, p in row(0, [0] + members).items():
                                a[0][j] += p / heads / len(groups)
                    elif rule == "global":
                        for j, p in row(0, list(range(size))).items():
                            a[0][j] += p / heads
                for i in range(size):
                    a[i] = [0.5 * a[i][j] + (0.5 if i == j else 0.0) for j in range(size)]
                    z = sum(a[i])
                    a[i] = [v / z for v in a[i]]
                r = [[sum(a[i][k] * r[k][j] for k in range(size)) for j in range(size)] for i in range(size)]
                # advance the tokens exactly as the block does
                y = attention(attn, xn, torch.tensor(ids), rule)
                if fc is not None:
                    y = _linear(y, fc)
                    if rule == "exclude":
                        y[:, 0] = 0
                x = x + y
            x = x + _mlp(_ln(x, blk.norm2), blk.mlp)
        rows.append(r[0])
    if frame_independent:
        cls_share = sum(rw[0] for rw in rows) / f
        patch = [[v / f for v in rw[1:]] for rw in rows]
    else:
        cls_share, patch = rows[0][0], [rows[0][1 + t * n: 1 + (t + 1) * n] for t in range(f)]
    return cls_share, torch.tensor(patch, dtype=torch.float64).view(f, gh, gw)


@pytest.mark.parametrize("scheme,cls_mode", CASES)
def test_rollout_equals_hand_computation(scheme, cls_mode):
    model = tiny(scheme, cls_mode)  # 2 blocks, 2 frames, 4 patches
    video = clip(model)
    cls_share, patches = hand_rollout(model, video)
    e = explain_clip(model, video)
    # float64 on both sides, different summation order: agreement to ~1e-15; 1e-12 leaves room
    assert abs(e.rollout_cls - cls_share) < 1e-12
    torch.testing.assert_close(e.rollout.double(), patches, rtol=0, atol=1e-12)
    assert abs(e.rollout_cls + float(e.rollout.sum()) - 1) < 1e-12
    assert patches.std() > 1e-3  # not a uniform map: the comparison means something


def test_a_scheme_registered_later_is_explained(monkeypatch):
    """A scheme the explain code has never heard of: rows of the patch grid across all frames, then space."""
    def rows_groups(f, gh, gw):
        n = gh * gw
        return (TokenGroups(group=((gh, gw),), seq=((f, n), (gw, 1)), kind="rows"), TokenGroups.space(f, n))

    scheme = Scheme("rows_then_space", "R+S", (Step("rows", "rows"), Step("space", "")), rows_groups)
    monkeypatch.setitem(SCHEMES, scheme.name, scheme)
    model = tiny(scheme.name)

    def ids_of(step, f, gh, gw):  # group id of each patch, from the scheme's own groups
        g = dict(zip(("rows", "space"), rows_groups(f, gh, gw)))[step].index()
        ids = torch.empty(g.numel(), dtype=torch.long)
        for k, members in enumerate(g.tolist()):
            ids[members] = k
        return ids

    video = clip(model)
    cls_share, patches = hand_rollout(model, video, ids_of)
    e = explain_clip(model, video, step="rows")
    assert abs(e.rollout_cls - cls_share) < 1e-12
    torch.testing.assert_close(e.rollout.double(), patches, rtol=0, atol=1e-12)
    # the rows step mixes frames: frame t draws from both frames
    assert (e.maps["rows"].frame_to_frame > 0.01).all()


def test_hand_rollout_detects_a_wrong_rule():
    """The comparison is sharp: counting the CLS as a key of the time step changes the rollout."""
    model = tiny("divided_space_time")
    video = clip(model)
    e = explain_clip(model, video)
    ok = hand_rollout(model, video)[1]
    torch.testing.assert_close(e.rollout.double(), ok, rtol=0, atol=1e-12)
    global_model = tiny("divided_space_time", "global")
    assert (explain_clip(global_model, video).rollout.double() - ok).abs().max() > 1e-3


# ---- the swap through the registry ------------------------------------------------------------------
def test_backends_and_options_are_restored():
    model = tiny("axial", dtype=torch.float32, std=0.3)
    model.set_backend({"time": ("regular", {"sdpa_backend": "math"}), "width": ("performer", {"nb_features": 8}),
                       "height": "regular"})
    before = [(m.backend_name, dict(m.backend_options), dict(m.cores)) for m in model.attention_modules()]
    video = clip(model, dtype=torch.float32)
    with torch.no_grad():
        expected = model(video)
    model.train()
    with pytest.warns(UserWarning, match="approximate attention \\(performer\\)"):
        explain_clip(model, video)
    assert model.training  # mode restored too
    model.eval()
    after = [(m.backend_name, dict(m.backend_options), dict(m.cores)) for m in model.attention_modules()]
    for (n0, o0, c0), (n1, o1, c1) in zip(before, after):
        assert (n0, o0) == (n1, o1) and "recording" not in c1
        assert all(c0[k] is c1[k] for k in c0)  # the same core objects (performer keeps its features)
    with torch.no_grad():
        torch.testing.assert_close(model(video), expected, rtol=0, atol=0)


def test_unknown_step_and_layer_are_one_line_errors():
    model = tiny("divided_space_time")
    with pytest.raises(ValueError) as e:
        explain_clip(model, clip(model), step="width")
    msg = str(e.value)
    assert "\n" not in msg and "width" in msg and "time" in msg and "space" in msg
    with pytest.raises(ValueError, match="layer 5"):
        explain_clip(model, clip(model), layers=[5])


def test_save_writes_pictures_arrays_and_summary(tmp_path):
    from safetensors import safe_open

    model = tiny("divided_space_time", dtype=torch.float32, std=0.3)
    e = explain_clip(model, clip(model, dtype=torch.float32)[0], step="time", classes=["a", "b", "c"])
    paths = save_explanation(e, str(tmp_path), top_k=2)
    summary = json.loads(open(paths["summary"]).read())
    assert summary["prediction"]["label"] in ("a", "b", "c") and len(summary["top_k"]) == 2
    assert summary["rollout"]["cls_share"] + summary["rollout"]["patch_share"] == pytest.approx(1, abs=1e-5)
    assert sum(summary["rollout"]["per_frame"]) == pytest.approx(1, abs=1e-5)
    with safe_open(paths["arrays"], "pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("rollout").shape == (2, 2, 2)
        assert fh.get_tensor("time.frame_to_frame").shape == (2, 2, 2)  # (layers, f, f)
    assert {"time.probs.0", "time.probs.1", "space.probs.0", "space.cls_probs.1", "time.groups"} <= keys
    for key in ("rollout", "step"):
        assert open(paths[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ---- the command line ----------------------------------------------------------------------------
def write_video(path, frames):
    """frames: uint8 (f, H, W, 3) -> an mpeg4 file written with PyAV."""
    av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img.numpy(), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def shapes_video(path, frames=4, size=32, index=0):
    from fast_timesformer.train.data import MovingShapes

    x, _ = MovingShapes(4, num_frames=frames, image_size=size, num_classes=2, seed=3)[index]
    return write_video(path, (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint from a 2-step ``fast-timesformer train`` run on moving shapes, and a video."""
    from fast_timesformer.cli import main

    root = tmp_path_factory.mktemp("explain_cli")
    model = '{"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "patch_size": 4, "mlp_ratio": 2.0}'
    rc = main(["train", "--dataset", "moving-shapes", "--model", model, "--frames", "4", "--image-size", "16",
               "--num-classes", "2", "--train-samples", "8", "--eval-samples", "4", "--steps", "2", "--batch",
               "4", "--out", str(root / "run"), "--no-progress"])
    assert rc == 0
    return root / "run" / "last.safetensors", shapes_video(root / "clip.mp4")


def test_cli_explain_a_train_checkpoint(run, tmp_path, capsys):
    from safetensors import safe_open

    from fast_timesformer.cli import main

    ckpt, video = run
    capsys.readouterr()
    assert main(["explain", str(video), "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"), "--step",
                 "space", "--layer", "1", "--top-k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["prediction"]["label"] == printed["prediction"] and printed["prediction"] in ("forward", "backward")
    assert summary["step_shown"] == {**summary["step_shown"], "step": "space", "layers": [1]}
    assert summary["rollout"]["cls_share"] + summary["rollout"]["patch_share"] == pytest.approx(1, abs=1e-5)
    for name in ("rollout.png", "step_space.png"):
        assert (tmp_path / "x" / name).read_bytes()[:4] == b"\x89PNG"
    with safe_open(str(tmp_path / "x" / "attention.safetensors"), "pt") as fh:
        assert fh.get_tensor("rollout").shape == (4, 4, 4)  # 4 frames of a 4x4 patch grid
        assert fh.get_tensor("frames").shape == (4, 16, 16, 3)


def test_cli_explain_a_hugging_face_checkpoint(run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")
    from fast_timesformer.cli import main

    torch.manual_seed(0)
    cfg = transformers.TimesformerConfig(image_size=16, patch_size=8, num_frames=4, hidden_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                         num_labels=3, id2label={0: "left", 1: "right", 2: "still"},
                                         label2id={"left": 0, "right": 1, "still": 2})
    hf = transformers.TimesformerForVideoClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    _, video = run
    assert main(["explain", str(video), "--checkpoint", str(tmp_path / "hf"), "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["prediction"]["label"] in ("left", "right", "still") and summary["step_shown"]["step"] == "time"
    # the weights file alone (Hugging Face names, config.json beside it)
    assert main(["explain", str(video), "--checkpoint", str(tmp_path / "hf" / "model.safetensors"), "--out",
                 str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert again["rollout"]["cls_share"] == pytest.approx(summary["rollout"]["cls_share"], abs=1e-6)


def _one_line_error(capsys, argv, *needles):
    from fast_timesformer.cli import console

    capsys.readouterr()
    assert console(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fast-timesformer: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    print(err, file=sys.__stderr__)
    return err


def test_cli_bad_input_is_one_line(run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt, video = run
    out = str(tmp_path / "out")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    _one_line_error(capsys, ["explain", str(corrupt), "--checkpoint", str(ckpt), "--out", out], "corrupt.mp4")
    _one_line_error(capsys, ["explain", str(tmp_path / "missing.mp4"), "--checkpoint", str(ckpt), "--out", out],
                    "missing.mp4")
    _one_line_error(capsys, ["explain", str(video), "--checkpoint", str(ckpt), "--out", out, "--step", "width"],
                    "width", "time", "space")
    _one_line_error(capsys, ["explain", str(video), "--checkpoint", str(ckpt), "--out", out, "--layer", "7"],
                    "layer 7")
    # a train checkpoint whose tensors do not fit the model it describes (the head's weight left out)
    with safe_open(str(ckpt), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys() if k != "model.head.weight"}
    save_file(tensors, str(tmp_path / "mismatched.safetensors"), metadata=meta)
    _one_line_error(capsys, ["explain", str(video), "--checkpoint", str(tmp_path / "mismatched.safetensors"),
                             "--out", out], "mismatched.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    _one_line_error(capsys, ["explain", str(video), "--checkpoint", str(garbage), "--out", out], "garbage.safetensors")
    garbage_pyth = tmp_path / "garbage.pyth"
    garbage_pyth.write_bytes(b"PK\x03\x04" + b"\x01" * 60)
    _one_line_error(capsys, ["explain", str(video), "--checkpoint", str(garbage_pyth), "--out", out], "garbage.pyth")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


# ---- a trained model looks at the shape ----------------------------------------------------------
def _trajectory_ratio(model, data, n=64, frames=4, patch=4):
    """Mean rollout per patch the shape passes through (in any frame of the clip) over the mean per patch
    it never touches, pooled over ``n`` clips; trajectories from the noise-free base clips."""
    xs = torch.stack([data[i][0] for i in range(n)]).to(next(model.parameters()).dtype)
    _, records = record_attention(model, xs, keep_heads=False)
    grid = (xs.shape[-2] // patch, xs.shape[-1] // patch)
    _, patches = clip_rollout(records, clip_layout(records, n, frames, grid))
    base = torch.stack([data.base_clip(i) for i in range(n)]).amax(2)  # (n, f, H, W): shape pixels > 0
    touched = F.max_pool2d(base.flatten(0, 1)[:, None], patch).view(n, frames, *grid) > 0
    trajectory = touched.any(1, keepdim=True).expand_as(touched)
    on = patches[trajectory].mean()
    off = patches[~trajectory].mean()
    return float(on / off)


@pytest.mark.slow
def test_trained_model_rolls_out_onto_the_shapes_path():
    """Moving shapes (2 classes: forward / backward order, 4 frames of 16x16 px, shapes 5-8 px), divided
    space-time, dim 32, depth 2, 500 AdamW steps of 32 clips in float64 (about 25 s on one idle core).

    Trained in float64: 500 AdamW steps amplify round-off, and in float32 a 5e-7 change in the attention
    path's summation order (or 1 thread instead of 2) moved seed 0's ratio from 2.5 to 0.56. In float64
    the same run gave 2.20 (AVX-512, 1 thread), 2.13 (ATEN_CPU_CAPABILITY=default, 1 thread) and 2.05
    (2 threads); seed 1: 2.45. Untrained: 1.00 +- 0.005. The test fixes seed 0 and asks for 1.15. With
    the default large shapes (half the image and more) the background is as informative as the shape
    and the ratio went either way (0.51-1.52), so the test uses 5-8 px shapes.
    """
    from fast_timesformer.train.data import MovingShapes

    seed, steps, batch, lr = 0, 500, 32, 3e-3
    kw = dict(num_frames=4, image_size=16, num_classes=2, shape_size=(5, 8), speed=1)
    train = MovingShapes(8192, seed=seed, cache=True, **kw)
    held_out = MovingShapes(64, seed=seed + 7919, **kw)
    torch.manual_seed(seed)
    model = TimeSformer(num_classes=2, num_frames=4, image_size=16, patch_size=4, dim=32, depth=2, heads=2,
                        mlp_ratio=2.0, drop_path=0.0).double()
    untrained = _trajectory_ratio(model, held_out)
    assert abs(untrained - 1) < 0.02, untrained  # near-uniform attention at init: no preference
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for step in range(steps):
        # consecutive samples share a base trajectory (one per label): whole groups in every batch
        xs, ys = zip(*(train[(step * batch + j) % len(train)] for j in range(batch)))
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = F.cross_entropy(model(torch.stack(xs).double()), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = _trajectory_ratio(model, held_out)
    assert trained > 1.15, (untrained, trained)
