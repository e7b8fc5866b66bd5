"""The five schemes: their token groups, their size rules, schemes x backends, and that each one trains."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_timesformer import BackendUnavailable, get_backend, list_backends
from fast_timesformer.models import TimeSformer
from fast_timesformer.schemes import get_scheme, list_schemes

F_, GH, GW = 4, 4, 6  # frames, patch rows, patch columns (a non-square grid catches h/w mix-ups)


def coords(f, gh, gw):
    m = torch.arange(f * gh * gw)
    return m // (gh * gw), (m % (gh * gw)) // gw, m % gw


@pytest.mark.parametrize("scheme", list_schemes())
def test_groups_partition_the_tokens(scheme):
    for g in get_scheme(scheme).token_groups(F_, GH, GW):
        idx = g.index()
        assert sorted(idx.flatten().tolist()) == list(range(F_ * GH * GW)), g


# what every step's group must hold fixed, written from coordinates (t, y, x)
INVARIANTS = {
    "time": lambda t, y, x: (y, x),
    "space": lambda t, y, x: (t,),
    "joint": lambda t, y, x: (),
    "width": lambda t, y, x: (t, y),
    "height": lambda t, y, x: (t, x),
    "local": lambda t, y, x: (y // (GH // 2), x // (GW // 2)),
    "global": lambda t, y, x: (t % 2, y % 2, x % 2),
    "neighborhood": lambda t, y, x: (),  # one group (joint); its mask is tested in test_neighborhood.py
}
SEQ_LEN = {"time": F_, "space": GH * GW, "joint": F_ * GH * GW, "width": GW, "height": GH,
           "local": F_ * GH * GW // 4, "global": F_ * GH * GW // 8, "neighborhood": F_ * GH * GW}


@pytest.mark.parametrize("scheme", list_schemes())
def test_groups_hold_the_right_coordinates_fixed(scheme):
    s = get_scheme(scheme)
    t, y, x = coords(F_, GH, GW)
    for step, g in zip(s.step_names, s.token_groups(F_, GH, GW)):
        idx = g.index()
        assert idx.shape[1] == SEQ_LEN[step], step
        keys = [tuple(int(v) for v in INVARIANTS[step](t[i], y[i], x[i])) for i in idx.flatten().tolist()]
        keys = [keys[r * idx.shape[1]:(r + 1) * idx.shape[1]] for r in range(idx.shape[0])]
        for row in keys:
            assert len(set(row)) == 1, (step, row)  # fixed within a group
        assert len({row[0] for row in keys}) == idx.shape[0], step  # and distinct between groups


def invariants(step, gh, gw):
    return {"local": lambda t, y, x: (y // max(gh // 2, 1), x // max(gw // 2, 1)),
            "global": lambda t, y, x: (t % 2, y % 2, x % 2)}.get(step, INVARIANTS[step])


@settings(max_examples=25, deadline=None)
@given(f=st.sampled_from([1, 2, 4, 6]), gh=st.sampled_from([1, 2, 4, 6]), gw=st.sampled_from([1, 2, 4, 8]),
       scheme=st.sampled_from(list_schemes()))
def test_groups_on_other_sizes(f, gh, gw, scheme):
    """Any even (or 1) size: the groups partition the tokens and hold their coordinates fixed."""
    s = get_scheme(scheme)
    t, y, x = coords(f, gh, gw)
    for step, g in zip(s.step_names, s.token_groups(f, gh, gw)):
        idx = g.index()
        assert sorted(idx.flatten().tolist()) == list(range(f * gh * gw))
        key = invariants(step, gh, gw)
        rows = [{tuple(int(v) for v in key(t[i], y[i], x[i])) for i in row.tolist()} for row in idx]
        assert all(len(r) == 1 for r in rows), step
        assert len({next(iter(r)) for r in rows}) == idx.shape[0], step


def test_global_step_is_a_stride_2_lattice():
    g = get_scheme("sparse_local_global").token_groups(F_, GH, GW)[1]
    t, y, x = coords(F_, GH, GW)
    first = g.index()[0]  # the (0, 0, 0) phase: every second frame, row and column
    assert set(zip(t[first].tolist(), y[first].tolist(), x[first].tolist())) == {
        (a, b, c) for a in range(0, F_, 2) for b in range(0, GH, 2) for c in range(0, GW, 2)}


def test_local_global_sizes():
    s = get_scheme("sparse_local_global")
    for f, gh, gw in [(3, 4, 4), (4, 5, 4), (4, 4, 7)]:
        with pytest.raises(ValueError, match="odd"):
            s.token_groups(f, gh, gw)
    local, glob = s.token_groups(1, 2, 1)  # size-1 axes are not split
    assert (local.num_groups, glob.num_groups) == (2, 2)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="Did you mean 'axial'"):
        get_scheme("axail")


# ---- schemes x backends ---------------------------------------------------------------------------
def tiny(scheme, **kw):
    model = TimeSformer(num_frames=2, image_size=(16, 32), patch_size=8, dim=32, depth=1, heads=2, num_classes=3,
                        drop_path=0.0, scheme=scheme, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("backend", list_backends())
@pytest.mark.parametrize("scheme", list_schemes())
def test_scheme_runs_with_backend(scheme, backend):
    be = get_backend(backend)
    reasons = be.unavailable_reasons()
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))
    torch.manual_seed(0)
    base = tiny(scheme)
    x = torch.randn(2, 2, 3, 16, 32, requires_grad=True)
    model = copy.deepcopy(base).set_backend(backend)
    try:
        out = model(x)
    except BackendUnavailable as e:  # the backend's own why_not reasons for these inputs
        pytest.skip(str(e))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if be.exact:  # same weights, same numbers as regular
        grad = x.grad.clone()
        x.grad = None
        ref = base(x)
        ref.square().sum().backward()
        # float32, the same math in another order (kernel, grouping): ~1e-6 on O(1) logits; 1e-4 / 1e-5
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scheme", list_schemes())
def test_every_step_can_take_its_own_backend(scheme):
    pytest.importorskip("performer_pytorch")
    steps = get_scheme(scheme).step_names
    mapping = {s: ("performer", {"nb_features": 16}) if i % 2 else "fastformer" for i, s in enumerate(steps)}
    model = tiny(scheme, backend=mapping)
    assert [m.backend for m in model.attention_modules()] == [
        "performer" if i % 2 else "fastformer" for i, _ in enumerate(steps)]
    try:
        out = model(torch.randn(1, 2, 3, 16, 32))
    except BackendUnavailable as e:  # a mask-defined step (neighborhood): partition-only backends refuse it
        assert "token mask" in str(e)
        pytest.skip(str(e))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("scheme", list_schemes())
def test_every_scheme_trains(scheme):
    torch.manual_seed(0)
    model = TimeSformer(num_frames=2, image_size=16, patch_size=8, dim=32, depth=2, heads=2, num_classes=3,
                        drop_path=0.1, scheme=scheme)
    x = torch.randn(6, 2, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.65 * losses[0], losses  # chance level is ln 3 = 1.1
    # every extra step's zero-initialised fc has left zero (it receives gradient)
    for blk in model.blocks:
        for _, _, _, fc in blk.attention_layers():
            if fc is not None:
                assert fc.weight.abs().max() > 0
