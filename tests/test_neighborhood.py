"""The mask-defined ``neighborhood`` scheme: NATTEN's windows against loops, exactness of the masked step on
``regular`` (forward and gradients) and ``flex`` (eager) in float64, full windows equal full attention,
refusals, the mask caches, parameters and FLOPs from the window, the model options and the command line."""
import argparse

import pytest
import torch
from attn_reference import softmax_attention
from timesformer_reference import neighborhood_allowed

from fast_timesformer import BackendUnavailable, DividedAttention, TimeSformer, get_backend, get_scheme, list_backends
from fast_timesformer.backends import flex
from fast_timesformer.groups import SequenceMask, TokenGroups, _dense
from fast_timesformer.models.timesformer import count_parameters
from fast_timesformer.neighborhood import neighborhood_groups

SIZES = [(5, 1, 7), (1, 3, 4), (4, 4, 6), (3, 5, 5)]  # (frames, patch rows, patch cols): T = 1, 5; N = 7
WINDOWS = [(1, 3, 3), (3, 1, 5), (3, 3, 3), (5, 5, 7)]  # the last as large as (or larger than) every axis


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_mask_is_natten_windows(size, window):
    f, gh, gw = size
    g = neighborhood_groups(f, gh, gw, window=window)
    dense = g.mask.dense()
    assert dense.tolist() == neighborhood_allowed(f, gh, gw, window)
    # shifted, not shrunk: every query sees the same count, itself among them
    per_query = 1
    for w, axis in zip(window, size):
        per_query *= min(w, axis)
    assert (dense.sum(1) == per_query).all()
    assert dense.diagonal().all()


def test_border_window_is_shifted_inward():
    g = neighborhood_groups(1, 1, 6, window=(1, 1, 3))
    rows = g.mask.dense().int().tolist()
    assert rows[0] == [1, 1, 1, 0, 0, 0]  # at the left border: 0, 1, 2 (not 0, 1)
    assert rows[5] == [0, 0, 0, 1, 1, 1]
    assert rows[2] == [0, 1, 1, 1, 0, 0]  # inside: centred


# ---- the masked step of a layer, against a float64 loop reference ---------------------------------------
def masked_reference(layer, x, allowed, cls):
    """Per patch query: softmax over [CLS;] the patches it may see; the CLS query (global / per_group, one
    group) over every token; exclude: its row is 0. Written with index lists, float64."""
    x = x.double()
    h, d = layer.heads, layer.dim_head
    qkv = (x @ layer.qkv.weight.double().T + layer.qkv.bias.double()).view(x.shape[0], x.shape[1], 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    off = 0 if cls == "none" else 1
    out = torch.zeros(x.shape[0], h, x.shape[1], d, dtype=torch.float64)
    for i, row in enumerate(allowed):
        keys = [off + j for j, ok in enumerate(row) if ok]
        keys = keys if cls in ("none", "exclude") else [0] + keys
        out[:, :, off + i] = softmax_attention(q[:, :, off + i:off + i + 1], k[:, :, keys], v[:, :, keys],
                                               layer.scale)[:, :, 0]
    if cls in ("global", "per_group"):
        out[:, :, :1] = softmax_attention(q[:, :, :1], k, v, layer.scale)
    y = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], h * d)
    return y @ layer.proj.weight.double().T + layer.proj.bias.double()


MODES = ["global", "per_group", "exclude", "official", "none"]


def _resolved(mode):
    return "per_group" if mode == "official" else mode  # a neighbourhood step is not attention along time


@pytest.mark.parametrize("size,window", [((5, 1, 7), (3, 1, 3)), ((1, 3, 4), (1, 3, 3)), ((3, 2, 5), (3, 3, 3))],
                         ids=str)
def test_regular_forward_and_gradients_match_loop_reference(size, window):
    f, gh, gw = size
    groups = neighborhood_groups(f, gh, gw, window=window)
    allowed = neighborhood_allowed(f, gh, gw, window)
    layer = DividedAttention(24, heads=2, dim_head=40, backend="regular").double()
    tol = get_backend("regular").tolerance(torch.float64)  # float64: round-off only
    for mode in MODES:
        x = torch.randn(2, (mode != "none") + f * gh * gw, 24, dtype=torch.float64, requires_grad=True)
        y = layer(x, groups=groups, cls=mode)
        xr = x.detach().clone().requires_grad_(True)
        ref = masked_reference(layer, xr, allowed, _resolved(mode))
        torch.testing.assert_close(y, ref, atol=tol[0], rtol=tol[1], msg=lambda m: f"{mode}: {m}")
        w = torch.randn_like(ref)
        params = [layer.qkv.weight, layer.proj.weight]
        g = torch.autograd.grad((y * w).sum(), [x] + params)
        gr = torch.autograd.grad((ref * w).sum(), [xr] + params)
        for a, r in zip(g, gr):  # three more matmuls: 10x
            torch.testing.assert_close(a, r, atol=10 * tol[0], rtol=10 * tol[1])


@pytest.mark.parametrize("size,window", [((5, 1, 7), (3, 1, 3)), ((3, 2, 5), (3, 3, 3))], ids=str)
def test_flex_matches_loop_reference(size, window):
    f, gh, gw = size
    groups = neighborhood_groups(f, gh, gw, window=window)
    allowed = neighborhood_allowed(f, gh, gw, window)
    layer = DividedAttention(24, heads=2, dim_head=40, backend="flex", compile=False).double()
    tol = flex.EAGER.tolerance(torch.float64)
    for mode in MODES:
        x = torch.randn(2, (mode != "none") + f * gh * gw, 24, dtype=torch.float64)
        with torch.no_grad():
            y = layer(x, groups=groups, cls=mode)
        torch.testing.assert_close(y, masked_reference(layer, x, allowed, _resolved(mode)), atol=tol[0], rtol=tol[1],
                                   msg=lambda m: f"{mode}: {m}")


def test_masked_groups_beyond_one_group():
    """A mask on top of several groups (a neighbourhood mask inside temporal groups): both mask backends
    agree with each other and with the loop reference restricted to each group."""
    f, gh, gw = 4, 2, 3
    n = gh * gw
    mask = neighborhood_groups(f, gh, gw, window=(3, 1, 1)).mask
    groups = TokenGroups(group=((n, 1),), seq=((f, n),), kind="masked_time", mask=mask)
    allowed = neighborhood_allowed(f, gh, gw, (3, 1, 1))  # window 1 along h, w: only the same position
    for backend, opts in (("regular", {}), ("flex", {"compile": False})):
        layer = DividedAttention(16, heads=2, dim_head=8, backend=backend, **opts).double()
        for mode in ("exclude", "none"):
            x = torch.randn(2, (mode != "none") + f * n, 16, dtype=torch.float64)
            with torch.no_grad():
                y = layer(x, groups=groups, cls=mode)
            torch.testing.assert_close(y, masked_reference(layer, x, allowed, mode))


@pytest.mark.parametrize("backend", ["regular", "flex"])
def test_full_window_is_full_attention_along_the_axis(backend):
    """window = (f, gh, gw): joint attention; (1, gh, gw): attention within each frame (space); (f, 1, 1):
    along time. Same weights, float64."""
    f, gh, gw = 3, 2, 4
    n = gh * gw
    opts = {"compile": False} if backend == "flex" else {}
    layer = DividedAttention(16, heads=2, dim_head=8, backend=backend, **opts).double()
    with torch.no_grad():
        for window, same, modes in (((f, gh, gw), TokenGroups.joint(f, n), ("global", "per_group", "exclude", "none")),
                                    ((1, gh, gw), TokenGroups.space(f, n), ("exclude", "none")),
                                    ((f, 1, 1), TokenGroups.time(f, n), ("exclude", "none"))):
            for mode in modes:
                x = torch.randn(2, (mode != "none") + f * n, 16, dtype=torch.float64)
                torch.testing.assert_close(layer(x, groups=neighborhood_groups(f, gh, gw, window=window), cls=mode),
                                           layer(x, groups=same, cls=mode))


def test_full_window_model_equals_joint_space_time():
    kw = dict(num_classes=3, num_frames=2, image_size=12, patch_size=4, dim=16, depth=2, heads=2, drop_path=0.0)
    joint = TimeSformer(scheme="joint_space_time", **kw).double().eval()
    nb = TimeSformer(scheme="neighborhood", scheme_options={"window": (3, 3, 5)}, **kw).double().eval()
    nb.load_state_dict(joint.state_dict())  # the same parameters, whatever the window
    x = torch.randn(2, 2, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(nb(x), joint(x))


# ---- backends: native, refused, auto, caches ----------------------------------------------------------
def test_partition_only_backends_refuse_with_a_reason():
    mask = SequenceMask(neighborhood_groups(2, 2, 2, window=(1, 1, 1)), 1)
    q = torch.zeros(1, 2, 9, 8)
    for name in list_backends():
        be = get_backend(name)
        reasons = be.why_not(q, q, q, mask=mask, needs_grad=False)
        if be.supports_mask:
            assert not any("token mask" in r for r in reasons), name
        else:
            assert any("token mask" in r for r in reasons), (name, reasons)
    assert {n for n in list_backends() if get_backend(n).supports_mask} == {"regular", "flex"}
    model = TimeSformer(num_classes=2, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2,
                        scheme="neighborhood", backend="fastformer")
    with pytest.raises(BackendUnavailable, match="token mask"):
        model(torch.randn(1, 2, 3, 8, 8))


def test_auto_picks_a_mask_backend():
    model = TimeSformer(num_classes=2, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2,
                        scheme="neighborhood", backend="auto")
    model(torch.randn(1, 2, 3, 8, 8)).sum().backward()  # with grad: regular (flex refuses CPU backward)
    assert set(model.blocks[0].attn.cores) == {"regular"}


def test_masks_are_built_once(monkeypatch):
    monkeypatch.setattr(flex, "MASK_CACHE", type(flex.MASK_CACHE)())
    groups = neighborhood_groups(3, 3, 3, window=(3, 1, 3))
    layer = DividedAttention(16, heads=2, dim_head=8, backend="flex", compile=False).double()
    x = torch.randn(2, 1 + 27, 16, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x, groups=groups)
        core = layer.cores["flex"]
        assert core.masks_built == 1
        second = layer(x, groups=groups)
        layer(x[:1], groups=groups)  # another batch size: one group, the mask broadcasts
        assert core.masks_built == 1  # a second call builds no mask
    assert torch.equal(first, second)
    # regular: the dense mask is built once per (step, length, device) too
    _dense.cache_clear()
    reg = DividedAttention(16, heads=2, dim_head=8, backend="regular").double()
    reg(x, groups=groups)
    reg(x, groups=groups)
    info = _dense.cache_info()
    assert (info.misses, info.hits) == (1, 1)


# ---- the scheme: options, size rules, parameters, FLOPs ----------------------------------------------
def test_scheme_options_and_reasons():
    s = get_scheme("neighborhood")
    assert s.option_values == {"window": (3, 3, 3)}
    assert s.with_options(window=[1, 3, 3]).option_values == {"window": (1, 3, 3)}  # lists (JSON) as tuples
    assert s.with_options(window=3).reasons(2, 4) == []  # an int: the same along t, h, w
    assert any("odd" in r for r in s.with_options(window=(2, 3, 3)).reasons(4, 4))
    assert any("three ints" in r for r in s.with_options(window=(3, 3)).reasons(4, 4))
    with pytest.raises(ValueError, match="Did you mean 'window'"):
        s.with_options(windw=(1, 3, 3))
    with pytest.raises(ValueError, match="takes no options"):
        get_scheme("axial").with_options(window=(1, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        TimeSformer(num_classes=2, num_frames=4, image_size=16, patch_size=4, dim=16, depth=1, heads=2,
                    scheme="neighborhood", scheme_options={"window": (1, 4, 3)})


def test_parameters_do_not_depend_on_the_window_and_flops_follow_it():
    kw = dict(num_classes=10, num_frames=8, image_size=224, patch_size=16, dim=64, depth=2, heads=2)
    joint = count_parameters(TimeSformer(scheme="joint_space_time", **kw))
    for window in ((1, 3, 3), (3, 7, 7)):
        assert count_parameters(TimeSformer(scheme="neighborhood", scheme_options={"window": window}, **kw)) == joint
    f, grid = 8, 14
    m = f * grid * grid
    s = get_scheme("neighborhood")
    for window in ((1, 3, 3), (3, 7, 7), (9, 15, 15)):
        pairs = dict(s.with_options(window=window).attention_pairs(f, grid))["neighborhood"]
        per_query = min(window[0], f) * min(window[1], grid) * min(window[2], grid)
        assert pairs == m * per_query
    # attention FLOPs per layer: 4 * heads * dim_head * pairs (QK^T and PV); the full window is joint's
    assert dict(s.with_options(window=(9, 15, 15)).attention_pairs(f, grid))["neighborhood"] == \
        dict(get_scheme("joint_space_time").attention_pairs(f, grid))["joint"] == m * m


def test_scheme_options_travel_with_the_model():
    import copy

    model = TimeSformer(num_classes=2, num_frames=2, image_size=8, patch_size=4, dim=16, depth=1, heads=2,
                        scheme="neighborhood", scheme_options={"window": (1, 1, 1)})
    assert model.config["scheme_options"] == {"window": (1, 1, 1)}
    twin = copy.deepcopy(model)
    assert twin.scheme == model.scheme and twin.scheme.option_values == {"window": (1, 1, 1)}
    rebuilt = TimeSformer(**model.config)
    assert rebuilt.scheme == model.scheme


def test_command_line_scheme_option():
    from fast_timesformer.models import create_model
    from fast_timesformer.train.cli import _add_train_args, config_from_args
    from fast_timesformer.train.config import model_spec

    p = argparse.ArgumentParser()
    _add_train_args(p)
    args = p.parse_args(["--scheme", "neighborhood", "--scheme-option", "window=1,3,3", "--frames", "2",
                         "--image-size", "16", "--steps", "1"])
    cfg = config_from_args(args)
    assert cfg.scheme_options == {"window": (1, 3, 3)}
    spec = model_spec(cfg, num_classes=2)
    model = create_model(spec["registry"], **spec["kwargs"])
    assert model.scheme.name == "neighborhood" and model.scheme.option_values == {"window": (1, 3, 3)}


def test_a_training_step_moves_every_parameter():
    torch.manual_seed(0)
    model = TimeSformer(num_classes=3, num_frames=3, image_size=12, patch_size=4, dim=16, depth=2, heads=2,
                        scheme="neighborhood", scheme_options={"window": (1, 3, 3)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if "attn.qkv" in n)
