"""Bad input gets one true sentence naming the thing at fault (issue 9, models / checkpoints / layers):
names with their close match, empty batches, impossible sizes, corrupt and unsafe checkpoints, training
checkpoints through ``from_pretrained``, head counts that a state dict does not record, backend state
kept across a lax load, devices that do not exist."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fast_timesformer import (
    DividedAttention, GenerativeTimeSformer, TimeSformer, TokenGroups, get_backend, list_backends, set_backend,
)
from fast_timesformer.errors import UnknownNameError

BACKENDS = [b for b in list_backends() if not get_backend(b).unavailable_reasons()]
TINY = dict(num_classes=3, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2, drop_path=0.0)


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


def test_cli_scheme_typo_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-c", "import sys; from fast_timesformer.cli import console; "
                        "sys.exit(console(['models', '--scheme', 'divided']))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Did you mean 'divided_space_time'?" in lines[0], r.stderr


# ---- empty batches -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero_through_every_backend(backend):
    layer = DividedAttention(16, heads=2, dim_head=8, backend=backend)
    for cls in ("global", "per_group", "exclude", "official", "none"):
        for groups in (TokenGroups.time(2, 3), TokenGroups.space(2, 3), TokenGroups.joint(2, 3)):
            x = torch.randn(0, int(cls != "none") + 6, 16, requires_grad=True)
            y = layer(x, groups=groups, cls=cls)
            assert y.shape == x.shape
            y.sum().backward()
            assert x.grad.shape == x.shape
    x = torch.randn(0, 7, 16)
    assert layer(x, "b (f n) d", "(b n) f d", n=3).shape == x.shape
    assert layer(x, "b (f n) d", "(b f) n d", f=2).shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero_through_the_models(backend):
    model = TimeSformer(**TINY, backend=backend)
    video = torch.randn(0, 2, 3, 8, 8, requires_grad=True)
    logits = model(video)
    assert logits.shape == (0, 3)
    logits.sum().backward()
    assert video.grad.shape == video.shape
    gen = GenerativeTimeSformer(dim=16, image_size=8, patch_size=4, num_frames=2, num_target_frames=1, depth=1,
                                heads=2, dim_head=8, backend=backend)
    assert gen(torch.randn(0, 2, 3, 8, 8)).shape == (0, 1, 3, 8, 8)


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
