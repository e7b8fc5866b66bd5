"""Bad input gets one true sentence naming the thing at fault (issue 9, models / checkpoints / layers):
names with their close match, empty batches, impossible sizes, corrupt and unsafe checkpoints, training
checkpoints through ``from_pretrained``, head counts that a state dict does not record, backend state
kept across a lax load, devices that do not exist."""
import json

import pytest
import torch

from fast_timesformer import (
    DividedAttention,
    GenerativeTimeSformer,
    TimeSformer,
    TokenGroups,
    get_backend,
    list_backends,
    set_backend,
)
from fast_timesformer.errors import UnknownNameError

BACKENDS = [b for b in list_backends() if not get_backend(b).unavailable_reasons()]
TINY = dict(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2, drop_path=0.0)


from backend_devices import device_for  # noqa: E402  (shared with the other backend tests)


# ---- names: every lookup suggests the close match ----------------------------------------------------
@pytest.mark.parametrize("make, wrong, right", [
    (lambda n: TimeSformer(**{**TINY, "scheme": n}), "divided", "divided_space_time"),
    (lambda n: TimeSformer(**{**TINY, "scheme": n}), "joint", "joint_space_time"),
    (lambda n: TimeSformer(**{**TINY, "scheme": n}), "Axial", "axial"),
    (lambda n: TimeSformer(**{**TINY, "cls_mode": n}), "oficial", "official"),
    (lambda n: TimeSformer(**{**TINY, "backend": n}), "perf", "performer"),
    (lambda n: TimeSformer(**{**TINY, "backend": {n: "regular"}}), "tim", "time"),
    (lambda n: TimeSformer(**TINY).set_backend({n: "regular"}), "spac", "space"),
    (lambda n: set_backend(TimeSformer(**TINY), {n: "regular"}), "temporal", "time"),
    (lambda n: GenerativeTimeSformer(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1,
                                     depth=1, backend={n: "regular"}), "crss", "cross"),
    (lambda n: DividedAttention(16, heads=2, dim_head=8, cls=n), "per-group", "per_group"),
    (lambda n: DividedAttention(16, heads=2, dim_head=8, sdpa_backend=n), "eff", "efficient"),
    (lambda n: __import__("fast_timesformer").create_model(n), "timesformer_base", None),
])
def test_unknown_names_suggest_the_close_match(make, wrong, right):
    with pytest.raises(UnknownNameError) as err:
        make(wrong)
    msg = str(err.value)
    assert f"{wrong!r}" in msg and "known:" in msg and "\n" not in msg
    if right is not None:
        assert msg.endswith(f"Did you mean {right!r}?")


def test_unknown_backend_option_suggests_the_close_match():
    with pytest.raises(TypeError, match=r"unknown performer option 'nb_feature'.*Did you mean 'nb_features'"):
        DividedAttention(16, heads=2, dim_head=8, backend="performer", nb_feature=8)


def test_cli_scheme_typo_is_one_line_exit_2(capsys):
    from fast_timesformer.cli import console

    assert console(["models", "--scheme", "divided"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Did you mean 'divided_space_time'?" in lines[0] and "Traceback" not in err, err


# ---- empty batches -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero_through_every_backend(backend):
    dev = device_for(backend)
    layer = DividedAttention(16, heads=2, dim_head=8, backend=backend).to(dev)
    for cls in ("global", "per_group", "exclude", "official", "none"):
        for groups in (TokenGroups.time(2, 3), TokenGroups.space(2, 3), TokenGroups.joint(2, 3)):
            x = torch.randn(0, int(cls != "none") + 6, 16, device=dev, requires_grad=True)
            y = layer(x, groups=groups, cls=cls)
            assert y.shape == x.shape
            y.sum().backward()
            assert x.grad.shape == x.shape
    x = torch.randn(0, 7, 16, device=dev)
    assert layer(x, "b (f n) d", "(b n) f d", n=3).shape == x.shape
    assert layer(x, "b (f n) d", "(b f) n d", f=2).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero_through_the_models(backend):
    dev = device_for(backend)
    model = TimeSformer(**TINY, backend=backend).to(dev)
    video = torch.randn(0, 2, 3, 8, 8, device=dev, requires_grad=True)
    logits = model(video)
    assert logits.shape == (0, 3)
    logits.sum().backward()
    assert video.grad.shape == video.shape
    gen = GenerativeTimeSformer(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1, depth=1,
                                heads=2, dim_head=8, backend=backend).to(dev)
    assert gen(torch.randn(0, 2, 3, 8, 8, device=dev)).shape == (0, 1, 3, 8, 8)


# ---- impossible sizes: the message is true arithmetic ---------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (dict(n=-3), "n=-3: the size of axis 'n' in 'b (f n) d' must be a positive int"),
    (dict(n=0), "n=0: the size of axis 'n' in 'b (f n) d' must be a positive int"),
    (dict(n=7), "x has 1+50 tokens; 50 patch tokens are not divisible by n=7"),
    (dict(f=0), "f=0: the size of axis 'f' in 'b (f n) d' must be a positive int"),
    (dict(f=3), "x has 1+50 tokens; 50 patch tokens are not divisible by f=3"),
    (dict(f=5, n=11), "x has 1+50 tokens; f=5 x n=11 = 55, not the 50 patch tokens"),
    (dict(n=2.5), "n=2.5: the size of axis 'n' in 'b (f n) d' must be a positive int"),
])
def test_pattern_sizes(call, message):
    layer = DividedAttention(16, heads=2, dim_head=8)
    with pytest.raises(ValueError) as err:
        layer(torch.randn(1, 51, 16), "b (f n) d", "(b n) f d", **call)
    assert str(err.value) == message


def test_pattern_sizes_without_cls():
    layer = DividedAttention(16, heads=2, dim_head=8, cls="none")
    with pytest.raises(ValueError, match=r"^x has 50 tokens \(no CLS token\); 50 patch tokens are not divisible"):
        layer(torch.randn(1, 50, 16), "b (f n) d", "(b f) n d", f=3)


def test_token_groups_sizes():
    with pytest.raises(ValueError, match=r"TokenGroups.time\(f=-2, n=25\): f \(frames\) must be a positive int"):
        TokenGroups.time(-2, 25)
    with pytest.raises(ValueError, match=r"TokenGroups.space\(f=2, n=0\): n \(patches per frame\)"):
        TokenGroups.space(2, 0)
    with pytest.raises(ValueError, match=r"axis \(size=-1, stride=1\): a size must be >= 1"):
        TokenGroups(group=(), seq=((-1, 1),))
    layer = DividedAttention(16, heads=2, dim_head=8)
    with pytest.raises(ValueError, match=r"time groups cover 7 groups x 7 tokens = 49 patch tokens, but the input "
                                         r"has 50"):
        layer(torch.randn(1, 51, 16), groups=TokenGroups.time(7, 7))


# ---- corrupt checkpoints: CorruptCheckpointError naming the file, never an invitation to unpickle ------
from fast_timesformer.errors import CorruptCheckpointError  # noqa: E402
from fast_timesformer.models.checkpoint import UnsafeCheckpointError, load_pretrained, read_checkpoint  # noqa: E402

LOADERS = {
    "read_checkpoint": read_checkpoint,
    "load_pretrained": lambda p: load_pretrained(p, heads=2),
    "from_pretrained": lambda p: TimeSformer.from_pretrained(p, heads=2),
}
INVITATIONS = ("pickled", "trust", "weights_only=False", "arbitrary", "unpickling")


def _tiny_state():
    return TimeSformer(**TINY).state_dict()


def _torch_bytes(obj, tmp_path, legacy=False):
    path = tmp_path / "_ok.bin"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


def _safetensors_bytes(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "_ok.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_state().items()}, str(path))
    return path.read_bytes()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _damaged(good: bytes, how: str) -> bytes:
    rnd = torch.Generator().manual_seed(1)
    noise = bytes(torch.randint(0, 256, (2000,), generator=rnd, dtype=torch.uint8).tolist())
    return {
        "truncated": good[: len(good) // 2],
        "truncated_header": good[:20],
        "random": noise,
        "random_pickle_start": b"\x80\x02" + noise,
        "global_then_garbage": b"cos\nsystem\n" + noise,
        "empty": b"",
        "text": "model weights, see README\n".encode(),
        "crc": _flip(good, len(good) // 2),
    }[how]


CORRUPTIONS = ["truncated", "truncated_header", "random", "random_pickle_start", "global_then_garbage", "empty",
               "text", "crc"]


def _check_corrupt(path, loader, tmp_path):
    with pytest.raises(CorruptCheckpointError) as err:
        LOADERS[loader](path)
    msg = str(err.value)
    assert not isinstance(err.value, UnsafeCheckpointError)
    assert str(path) in msg or str(path.parent) in msg, msg
    assert not any(w in msg for w in INVITATIONS), msg
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("suffix, how", [(s, h) for s in (".pt", ".pth", ".pyth", ".bin") for h in CORRUPTIONS
                                         if h != "truncated_header" and (h != "crc" or s == ".pth")])
def test_corrupt_torch_files(tmp_path, suffix, how, loader):
    good = _torch_bytes({"model_state": _tiny_state()}, tmp_path)
    path = tmp_path / f"ckpt{suffix}"
    path.write_bytes(_damaged(good, how))
    msg = _check_corrupt(path, loader, tmp_path)
    expected = {"empty": "empty (0 bytes)", "text": "a text file", "crc": "CRC",
                "truncated": "truncated or damaged"}
    assert expected.get(how, "") in msg


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("how", ["truncated", "truncated_header", "random", "empty", "text"])
def test_corrupt_safetensors(tmp_path, how, loader):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(_damaged(_safetensors_bytes(tmp_path), how))
    msg = _check_corrupt(path, loader, tmp_path)
    assert "safetensors" in msg or "empty" in msg


def test_corrupt_legacy_torch_file(tmp_path):
    good = _torch_bytes({"model_state": _tiny_state()}, tmp_path, legacy=True)
    for how in ("truncated", "random_pickle_start"):
        path = tmp_path / f"{how}.pth"
        path.write_bytes(_damaged(good, how))
        _check_corrupt(path, "read_checkpoint", tmp_path)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "sharded"])
def test_corrupt_hugging_face_folders(tmp_path, weights):
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "timesformer", "hidden_size": 16,
                                                    "num_attention_heads": 2}))
    state = {k: v.contiguous() for k, v in _tiny_state().items()}
    if weights == "sharded":
        names = sorted(state)
        half = len(names) // 2
        save_file({k: state[k] for k in names[:half]}, str(folder / "model-1.safetensors"))
        save_file({k: state[k] for k in names[half:]}, str(folder / "model-2.safetensors"))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: "model-1.safetensors" if i < half else "model-2.safetensors"
                            for i, k in enumerate(names)}}))
        bad = folder / "model-2.safetensors"
    elif weights == "model.safetensors":
        save_file(state, str(folder / weights))
        bad = folder / weights
    else:
        torch.save(state, folder / weights)
        bad = folder / weights
    bad.write_bytes(bad.read_bytes()[:100])
    for loader in LOADERS:
        for target in (bad, folder):
            msg = _check_corrupt(target, loader, tmp_path)
            assert str(bad) in msg  # the damaged file (shard) itself is named
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CorruptCheckpointError, match=r"config\.json: config\.json is not valid JSON"):
        read_checkpoint(folder)


def test_only_a_well_formed_pickle_naming_a_global_is_unsafe(tmp_path):
    import argparse

    for legacy in (False, True):
        good = _torch_bytes({"model_state": _tiny_state(), "cfg": argparse.Namespace(lr=1)}, tmp_path, legacy)
        path = tmp_path / f"unsafe_{legacy}.pth"
        path.write_bytes(good)
        with pytest.raises(UnsafeCheckpointError, match=r"(?s)argparse\.Namespace.*If you trust the file"):
            read_checkpoint(path)
        # the same file cut short is damaged, not "unsafe": no invitation to unpickle it
        path.write_bytes(good[: len(good) // 3] if not legacy else good[:40])
        _check_corrupt(path, "read_checkpoint", tmp_path)


# ---- training checkpoints through from_pretrained ----------------------------------------------------
def _train(tmp_path, **kw):
    from fast_timesformer.train.config import TrainConfig
    from fast_timesformer.train.trainer import Trainer

    base = dict(model='{"dim": 32, "depth": 1, "heads": 4, "dim_head": 8, "patch_size": 8, "mlp_ratio": 2.0}',
                num_frames=4, image_size=16, train_samples=8, eval_samples=4, batch=4, steps=1, num_classes=2,
                out_dir=str(tmp_path), progress=False, eval_each_epoch=False, seed=0)
    trainer = Trainer(TrainConfig(**{**base, **kw}))
    trainer.fit()
    return trainer, tmp_path / "last.safetensors"


def test_training_checkpoint_loads_through_from_pretrained(tmp_path):
    trainer, path = _train(tmp_path, scheme="axial", backend="time=regular,width=performer,height=fastformer",
                           backend_options={"width.nb_features": 16})
    model = TimeSformer.from_pretrained(path)  # no heads=: the run recorded its constructor arguments
    cfg = model.config
    assert (cfg["scheme"], cfg["dim"], cfg["heads"], cfg["dim_head"], cfg["num_classes"], cfg["num_frames"]) == \
        ("axial", 32, 4, 8, 2, 4)
    assert model.load_report.ok and model.load_report.format == "fast_timesformer.train"
    assert model.load_report.meta["classes"] == trainer.classes
    assert model.blocks[0].width_attn.cores["performer"].nb_features == 16
    trained = trainer.module.eval()
    x = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():  # the same modules, weights and performer features: the same float32 operations
        assert torch.equal(model(x), trained(x))
    with pytest.raises(ValueError, match=r"holds a TimeSformer.*load it with TimeSformer\.from_pretrained"):
        GenerativeTimeSformer.from_pretrained(path)


def test_a_strict_mismatch_names_the_file_and_the_counts_in_its_first_line(tmp_path):
    from fast_timesformer.models.checkpoint import CheckpointMismatchError

    _, path = _train(tmp_path)
    with pytest.raises(CheckpointMismatchError) as info:
        TimeSformer.from_pretrained(path, num_classes=3)  # the head: weight and bias
    first, *detail = str(info.value).splitlines()
    assert first == f"{path}: the checkpoint does not fit the model (strict=True): 2 mis-shaped keys"
    assert any("head.weight (2, 32) in the checkpoint, (3, 32) in the model" in line for line in detail)
    with pytest.raises(CheckpointMismatchError) as info:
        TimeSformer.from_pretrained(path, depth=2)  # a block more: its keys are missing
    first = str(info.value).splitlines()[0]
    n = len(info.value.report.missing)
    assert n > 1 and first == f"{path}: the checkpoint does not fit the model (strict=True): {n} missing keys"


def test_generative_training_checkpoint(tmp_path):
    trainer, path = _train(tmp_path, dataset="bouncing", num_target_frames=1, backend="space=fastformer")
    with pytest.raises(ValueError, match=r"holds a GenerativeTimeSformer.*GenerativeTimeSformer\.from_pretrained"):
        TimeSformer.from_pretrained(path)
    model = GenerativeTimeSformer.from_pretrained(path)
    assert model.load_report.ok
    x = torch.rand(2, 4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), trainer.module.eval()(x))


def test_generative_from_pretrained_names_the_loader_for_other_files(tmp_path):
    torch.save({"model_state": _tiny_state()}, tmp_path / "t.pth")
    with pytest.raises(ValueError, match=r"not a GenerativeTimeSformer.*TimeSformer\.from_pretrained"):
        GenerativeTimeSformer.from_pretrained(tmp_path / "t.pth")


# ---- the head count is read, never assumed ------------------------------------------------------------
@pytest.mark.parametrize("dim, heads", [(192, 3), (384, 6), (768, 12), (1024, 16), (96, 2)])
def test_heads_are_required_unless_recorded(tmp_path, dim, heads):
    from fast_timesformer.errors import CheckpointConfigError

    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = TimeSformer(num_classes=2, num_frames=2, image_size=16, patch_size=8, dim=dim, depth=1, heads=heads,
                            mlp_ratio=0.5)
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    path = tmp_path / f"w{dim}.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointConfigError) as err:
        TimeSformer.from_pretrained(path)
    msg = str(err.value)
    assert str(path) in msg and "pass heads=N" in msg and f"attention width is {dim}" in msg and "\n" not in msg
    loaded = TimeSformer.from_pretrained(path, heads=heads)
    assert loaded.config["heads"] == heads and loaded.load_report.ok


def test_official_release_layout_records_twelve_heads(tmp_path):
    with torch.device("meta"):
        model = TimeSformer(num_classes=2, num_frames=2, image_size=16, patch_size=8, dim=768, depth=1, heads=12)
    state = {"model." + k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    torch.save({"model_state": state, "cfg": "MODEL:\n  ARCH: vit\n"}, tmp_path / "official.pyth")
    loaded = TimeSformer.from_pretrained(tmp_path / "official.pyth")
    assert loaded.config["heads"] == 12
    assert any("official TimeSformer code builds every model with 12 heads" in n for n in loaded.load_report.notes)


# ---- backend state survives a lax load ----------------------------------------------------------------
def _randomised(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    return module.eval()


def test_layer_keeps_loaded_fastformer_state_for_set_backend():
    src = _randomised(DividedAttention(16, heads=2, dim_head=8, backend="fastformer")).double()
    dst = DividedAttention(16, heads=2, dim_head=8, backend="regular").double()
    assert dst.load_state_dict(src.state_dict(), strict=False).unexpected_keys == []
    assert set(dst.state_dict()) == set(src.state_dict())  # kept, and saved again with the layer
    dst.set_backend("fastformer")
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    assert torch.equal(dst(x, groups=None), src(x, groups=None))
    assert dst.loaded_backend_state == {}


def test_kept_state_that_does_not_fit_the_options_raises():
    src = DividedAttention(16, heads=2, dim_head=8, backend="performer", nb_features=8)
    dst = DividedAttention(16, heads=2, dim_head=8, backend="regular")
    dst.load_state_dict(src.state_dict(), strict=False)
    with pytest.raises(ValueError, match=r"performer state loaded earlier.*does not fit.*nb_features': 32"):
        dst.set_backend("performer", nb_features=32)
    dst.set_backend("performer", nb_features=8)
    assert torch.equal(dst.cores["performer"].fast_attention.projection_matrix,
                       src.cores["performer"].fast_attention.projection_matrix)


@pytest.mark.parametrize("how", ["load_state_dict", "from_pretrained"])
def test_model_keeps_loaded_fastformer_state_for_set_backend(tmp_path, how):
    trained = _randomised(TimeSformer(**TINY, backend="fastformer")).double()
    model = TimeSformer(**TINY, backend="regular").double()
    if how == "load_state_dict":
        model.load_state_dict(trained.state_dict(), strict=False)
    else:
        from safetensors.torch import save_file

        save_file(trained.state_dict(), str(tmp_path / "t.safetensors"))
        model = TimeSformer.from_pretrained(tmp_path / "t.safetensors", heads=2, backend="regular",
                                            strict=False).double()
        assert len(model.load_report.kept_for_backend) == 8 and not model.load_report.unexpected
    with __import__("fast_timesformer").use_backend(model, "fastformer"):  # the scope keeps it too
        pass
    model.set_backend("fastformer")
    x = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), trained(x))


# ---- devices -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, message", [
    ("cuda:7" if torch.cuda.is_available() else "cuda", "CUDA device"),
    ("tpu", "not a device name torch knows"),
])
def test_from_pretrained_on_a_device_that_does_not_exist(tmp_path, device, message):
    from fast_timesformer.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match=message) as err:
        TimeSformer.from_pretrained(tmp_path / "not_even_read.pth", device=device)
    assert f"device={device!r}" in str(err.value)
    torch.save({"model_state": _tiny_state()}, tmp_path / "t.pth")
    assert next(TimeSformer.from_pretrained(tmp_path / "t.pth", heads=2, device="cpu").parameters()).device.type == "cpu"


def test_vit_temporal_init_typo_suggests_the_close_match():
    from fast_timesformer import load_vit_weights_into_timesformer

    with pytest.raises(UnknownNameError, match="Did you mean 'copy'"):
        load_vit_weights_into_timesformer(TimeSformer(**TINY), {}, temporal_init="cpy")


def test_generative_takes_per_step_options_as_a_training_config_stores_them():
    gen = GenerativeTimeSformer(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1, depth=1,
                                heads=2, dim_head=8, backend={"space": ["performer", {"nb_features": 8}]})
    layer = gen.layers[0].context.space_attn
    assert layer.backend == "performer" and layer.cores["performer"].nb_features == 8
    assert gen.layers[0].context.time_attn.backend == "regular"
