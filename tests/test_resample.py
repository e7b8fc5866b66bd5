"""Position/time embedding resampling: a 2-D grid resized as a grid, not as a flattened list."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_timesformer.models.resample import resample_pos_embed, resample_time_embed


def smooth_field(h, w, dim=4):
    """(1, h*w, dim): smooth functions of the cell-centre coordinates in [0, 1]^2, row-major."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    y, x = torch.meshgrid(y, x, indexing="ij")
    channels = [torch.sin(math.pi * x + 0.3), torch.cos(math.pi * y), x * y, torch.sin(math.pi * (x + y) / 2)]
    return torch.stack(channels[:dim], -1).reshape(1, h * w, dim)


def with_cls(grid, prefix=1):
    return torch.cat([torch.randn(1, prefix, grid.shape[-1]), grid], dim=1)


def official_resize(pos_embed, new_n):
    """What facebookresearch/TimeSformer does: 1-D nearest interpolation of the flattened grid."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    return torch.cat([cls, F.interpolate(grid.transpose(1, 2), size=new_n, mode="nearest").transpose(1, 2)], 1)


@pytest.mark.parametrize("old,new", [(4, 8), (7, 14), (14, 7), (8, (6, 12))])
def test_smooth_field_matches_analytic_values(old, new):
    pe = with_cls(smooth_field(old, old))
    nh, nw = (new, new) if isinstance(new, int) else new
    ours = resample_pos_embed(pe, new)
    assert ours.shape == (1, 1 + nh * nw, 4)
    assert torch.equal(ours[:, :1], pe[:, :1])  # the CLS row is set aside
    target = smooth_field(nh, nw)
    err_ours = (ours[:, 1:] - target).abs().max()
    err_official = (official_resize(pe, nh * nw)[:, 1:] - target).abs().max()
    assert err_ours < 0.13, err_ours
    assert err_official > 0.5, err_official  # the flattened-list resize lands patches in the wrong rows
    assert err_ours < err_official / 5


def test_field_of_the_column_only_stays_so():
    """A field that depends on the column only must not start depending on the row."""
    s, new = 4, 8
    col = torch.arange(s, dtype=torch.float32).repeat(s).reshape(1, s * s, 1)  # value = column index
    pe = with_cls(col)
    ours = resample_pos_embed(pe, new)[0, 1:, 0].reshape(new, new)
    assert torch.allclose(ours, ours[:1].expand(new, new), atol=1e-5)  # every row identical
    assert (ours[0, 1:] >= ours[0, :-1] - 1e-6).all()  # still increasing along the row
    official = official_resize(pe, new * new)[0, 1:, 0].reshape(new, new)
    assert (official - official[:1]).abs().max() >= 1  # rows differ: the official resize mixes rows


@pytest.mark.parametrize("s,big", [(7, 14), (8, 12), (14, 28)])
def test_up_then_down_is_close_to_the_original(s, big):
    pe = with_cls(smooth_field(s, s))
    back = resample_pos_embed(resample_pos_embed(pe, big), s)
    assert (back - pe).abs().max() < 0.01


def test_identity_and_prefix_tokens():
    pe = torch.randn(1, 2 + 12, 8)
    assert resample_pos_embed(pe, (3, 4), old_hw=(3, 4), num_prefix_tokens=2) is pe
    out = resample_pos_embed(pe, (6, 8), old_hw=(3, 4), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 48, 8) and torch.equal(out[:, :2], pe[:, :2])
    no_prefix = torch.randn(1, 16, 8)
    assert resample_pos_embed(no_prefix, 2, num_prefix_tokens=0).shape == (1, 4, 8)


def test_non_square_grid_layout_is_respected():
    """old_hw=(2, 3): rows of 3. A field that is the row index stays the row index."""
    rows = torch.arange(2, dtype=torch.float32).repeat_interleave(3).reshape(1, 6, 1)
    out = resample_pos_embed(with_cls(rows), (2, 6), old_hw=(2, 3))[0, 1:, 0].reshape(2, 6)
    assert torch.allclose(out, torch.tensor([[0.0] * 6, [1.0] * 6]), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(dtype):
    pe = torch.randn(1, 1 + 49, 16)
    low = resample_pos_embed(pe.to(dtype), 10)
    assert low.dtype == dtype
    ref = resample_pos_embed(pe.to(dtype).float(), 10).to(dtype)
    assert torch.equal(low, ref)
    t = torch.randn(1, 4, 16).to(dtype)
    assert resample_time_embed(t, 8).dtype == dtype
    assert torch.equal(resample_time_embed(t, 8), resample_time_embed(t.float(), 8).to(dtype))


def test_gradient_flows():
    pe = torch.randn(1, 17, 4, requires_grad=True)
    t = torch.randn(1, 4, 4, requires_grad=True)
    (resample_pos_embed(pe, 6).sum() + resample_time_embed(t, 7).sum()).backward()
    assert pe.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def explicit_linear(table, new_t):
    """Linear interpolation with frames as equal cells: new frame j sits at (j + .5) * T / new_t - .5."""
    t_old = table.shape[1]
    out = []
    for j in range(new_t):
        pos = min(max((j + 0.5) * t_old / new_t - 0.5, 0.0), t_old - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, t_old - 1)
        w = pos - lo
        out.append((1 - w) * table[0, lo] + w * table[0, hi])
    return torch.stack(out)[None]


@pytest.mark.parametrize("old,new", [(4, 8), (8, 4), (8, 16), (3, 5), (8, 1)])
def test_time_embed_is_linear_interpolation(old, new):
    t = torch.randn(1, old, 6)
    out = resample_time_embed(t, new)
    assert out.shape == (1, new, 6)
    assert torch.allclose(out, explicit_linear(t, new), atol=1e-6)


def test_time_embed_of_a_linear_ramp_stays_linear_inside():
    t = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1)
    out = resample_time_embed(t, 16)[0, :, 0]
    steps = out[2:-1] - out[1:-2]
    assert torch.allclose(steps, torch.full_like(steps, 0.5))
    assert resample_time_embed(t, 8) is t


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a square grid: pass old_hw"):
        resample_pos_embed(torch.randn(1, 1 + 12, 4), 4)
    with pytest.raises(ValueError, match=r"old_hw=\(3, 5\) holds 15 patches"):
        resample_pos_embed(torch.randn(1, 1 + 12, 4), 4, old_hw=(3, 5))
    with pytest.raises(ValueError, match="pos_embed must be a tensor"):
        resample_pos_embed(torch.randn(17, 4), 4)
    with pytest.raises(ValueError, match="new_hw must be positive"):
        resample_pos_embed(torch.randn(1, 17, 4), 0)
    with pytest.raises(ValueError, match="pair"):
        resample_pos_embed(torch.randn(1, 17, 4), (2, 3, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        resample_pos_embed(torch.randn(1, 17, 4), 4, num_prefix_tokens=20)
    with pytest.raises(ValueError, match="new_t must be a positive int"):
        resample_time_embed(torch.randn(1, 4, 4), 0)
    with pytest.raises(ValueError, match="time_embed must be a tensor"):
        resample_time_embed(torch.randn(4, 4), 8)



@settings(max_examples=25, deadline=None)
@given(oh=st.integers(1, 9), ow=st.integers(1, 9), nh=st.integers(1, 12), nw=st.integers(1, 12),
       prefix=st.integers(0, 2))
def test_any_grid_keeps_prefix_and_constants(oh, ow, nh, nw, prefix):
    """Any sizes: the prefix rows pass unchanged and a field constant over the grid stays that constant."""
    const = torch.randn(1, 1, 3).expand(1, oh * ow, 3)
    pe = torch.cat([torch.randn(1, prefix, 3), const], dim=1)
    out = resample_pos_embed(pe, (nh, nw), old_hw=(oh, ow), num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + nh * nw, 3)
    assert torch.equal(out[:, :prefix], pe[:, :prefix])
    # float32 bicubic of a constant: weights summing to 1 reproduce it up to a few ulp of O(1) values
    torch.testing.assert_close(out[:, prefix:], const[:, :1].expand(1, nh * nw, 3), atol=1e-5, rtol=1e-5)
