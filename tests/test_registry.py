"""The backend registry: lookup, errors, auto, and a user-written backend working everywhere."""
import subprocess
import sys

import pytest
import torch
from attn_reference import divided_reference, grouped_reference

import fast_timesformer as ft
from fast_timesformer import (
    AttentionCore,
    Backend,
    BackendUnavailable,
    DividedAttention,
    get_backend,
    list_backends,
    register_backend,
    resolve_backend,
    unregister_backend,
)
from fast_timesformer.cli import main as cli_main


def test_builtin_backends_are_registered_with_capabilities():
    names = list_backends()
    for n in ("regular", "performer", "fastformer", "xformers"):
        assert n in names
    assert get_backend("regular").exact and not get_backend("performer").exact
    assert not get_backend("fastformer").supports_cross
    row = get_backend("xformers").describe()
    assert set(row) >= {"name", "kind", "devices", "dtypes", "backward", "status"}


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(ValueError) as e:
        get_backend("perfomer")
    msg = str(e.value)
    assert "Did you mean 'performer'" in msg
    for n in list_backends():
        assert n in msg
    with pytest.raises(TypeError):
        get_backend(3)


def test_resolve_named_backend_never_falls_back():
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(BackendUnavailable) as e:
        resolve_backend("xformers", q, q, q) if not torch.cuda.is_available() else resolve_backend(
            "fastformer", q, q[:, :, :1], q[:, :, :1])
    assert e.value.reasons


def test_auto_raises_with_every_reason_when_nothing_fits():
    q = torch.randn(1, 2, 4, 16).to(torch.int32)
    with pytest.raises(BackendUnavailable) as e:
        resolve_backend("auto", q)
    text = str(e.value)
    assert "regular:" in text and "xformers:" in text


class HalfScaleCore(AttentionCore):
    """A user backend: exact softmax written by hand (float64 reference maths)."""

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        return grouped_reference(q, k, v, prefix_k, prefix_v, scale=scale).to(q.dtype)


@pytest.fixture
def user_backend():
    be = register_backend(Backend(name="handmade", factory=HalfScaleCore, kind="exact", priority=1,
                                  dtypes=(torch.float64,), description="test backend"))
    yield be
    unregister_backend("handmade")


def test_user_backend_works_everywhere(user_backend, capsys):
    assert "handmade" in list_backends()
    with pytest.raises(ValueError, match="already registered"):
        register_backend(user_backend)
    layer = DividedAttention(16, heads=2, dim_head=8, backend="handmade").double()
    x = torch.randn(2, 1 + 3 * 4, 16, dtype=torch.float64)
    from fast_timesformer import TokenGroups
    y = layer(x, "b (f n) d", "(b n) f d", n=4, cls="per_group")
    torch.testing.assert_close(y, divided_reference(layer, x, TokenGroups.time(3, 4).index(), "per_group"))
    # auto picks it (priority 1) for float64, and refuses float32 with its reason
    auto = DividedAttention(16, heads=2, dim_head=8, backend="auto").double()
    auto(x)
    assert "handmade" in auto.cores
    reasons = user_backend.why_not(torch.randn(1, 2, 3, 8))
    assert any("float32" in r for r in reasons)
    # switching a built layer to it, and the CLI table lists it
    other = DividedAttention(16, heads=2, dim_head=8).double()
    ft.set_backend(other, "handmade")
    assert other.backend == "handmade"
    assert cli_main(["backends"]) == 0
    assert "handmade" in capsys.readouterr().out


def test_register_rejects_bad_input():
    with pytest.raises(TypeError):
        register_backend("regular")
    with pytest.raises(ValueError, match="reserved"):
        register_backend(Backend(name="auto", factory=HalfScaleCore, kind="exact"))


def test_cli_backends_table():
    out = subprocess.run([sys.executable, "-m", "fast_timesformer.cli", "backends"], capture_output=True,
                         text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "devices"]
    for n in list_backends():  # every registered backend: "available", or its first reason on this machine
        row = next(ln for ln in lines if ln.startswith(n + " "))
        reasons = get_backend(n).unavailable_reasons()
        if not reasons:
            assert row.rstrip().endswith("available")
        else:
            assert reasons[0][:40] in row


def test_cli_reports_user_errors_in_one_line():
    """The console entry point turns a user error into one line on stderr and exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "fast_timesformer.cli", "train", "--backend", "regulr",
                           "--steps", "1", "--out", "/nonexistent-dir/never-written"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("fast-timesformer: error: unknown attention backend 'regulr'")
    assert "Traceback" not in proc.stderr



def test_plain_sequences_is_declared_data_that_decides_the_layer_path(monkeypatch):
    """``Backend.plain_sequences`` (shown by ``backends``) decides whether the layer lays out [CLS; group]
    sequences itself or calls the core's token-layout entry point; both paths compute the same attention,
    so a variant of regular declaring False gives regular's numbers (float64: to round-off) through the
    other path."""
    import dataclasses

    from fast_timesformer.groups import TokenGroups

    assert get_backend("regular").plain_sequences and not get_backend("performer").plain_sequences
    assert get_backend("regular").describe()["sequences"] == "plain"
    assert get_backend("performer").describe()["sequences"] == "tokens"
    be = register_backend(dataclasses.replace(get_backend("regular"), name="regular_tokens", plain_sequences=False))
    try:
        torch.manual_seed(0)
        layer = DividedAttention(32, heads=2, dim_head=16).double()
        x = torch.randn(2, 1 + 4 * 3, 32, dtype=torch.float64)
        space = TokenGroups.space(4, 3)
        called = []
        token_layout = AttentionCore.attend_groups

        def spy(self, *args, **kwargs):
            called.append(self.backend.name)
            return token_layout(self, *args, **kwargs)

        monkeypatch.setattr(AttentionCore, "attend_groups", spy)
        plain = layer(x, groups=space, cls="per_group")
        assert called == []  # regular: the layer laid out the sequences
        layer.set_backend(be.name)
        tokens = layer(x, groups=space, cls="per_group")
        assert called == [be.name]  # the declaration alone sent it through attend_groups
        torch.testing.assert_close(tokens, plain, atol=1e-12, rtol=0)
    finally:
        unregister_backend("regular_tokens")
