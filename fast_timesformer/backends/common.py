"""Helpers shared by the registry and the built-in backends (the plain attention math they share,
:func:`~fast_timesformer.kernels.naive.reference_attention`, lives beside the kernel's twin)."""
from __future__ import annotations

import torch


def empty_attention(q, k, v, prefix_k=None, prefix_v=None):
    """The (0, heads, Sq, d) result of attention over an empty batch, connected to every input so that
    backward runs and gives empty gradients. For the kernel backends (triton, xformers), whose launches
    need a non-empty grid; the plain-torch backends compute batch 0 as it comes."""
    out = q * 0
    for t in (k, v, prefix_k, prefix_v):
        if t is not None:
            out = out + t.sum() * 0  # the sum over an empty batch is 0
    return out


# ---- token layout <-> per-group sequences, one copy each way -------------------------------------
# The layer hands a core plain (batch*groups, heads, seq, dim) sequences and puts the results back in
# token layout. Written as autograd Functions so that each direction costs one copy in the forward and
# at most one in the backward (autograd's own rule for an in-place copy into a slice of a buffer clones
# the whole gradient, and a slice's backward fills a zero tensor first).
def _token_view(t: torch.Tensor, groups) -> torch.Tensor:
    """(b, M, *rest) patch tokens -> the (b, *group sizes, *seq sizes, *rest) view of the same memory."""
    b, m = t.shape[:2]
    rest = tuple(t.shape[2:])
    groups.check_tokens(m)
    sizes, pg, ps = groups._plan
    k = len(sizes)
    x = t.view(b, *sizes, *rest)
    return x.permute(0, *[1 + i for i in pg], *[1 + i for i in ps], *range(k + 1, k + 1 + len(rest)))


def _group_view(t: torch.Tensor, groups, b: int) -> torch.Tensor:
    """(b*groups, S, *rest) sequences -> (b, *group sizes, *seq sizes, *rest) view (splits axes only)."""
    return t.view(b, *[s for s, _ in groups.group], *[s for s, _ in groups.seq], *t.shape[2:])


def is_token_order(groups) -> bool:
    """True when the groups are one sequence of every patch in token order (joint attention): the
    token layout itself is then the one group's sequence, and no copy is needed either way."""
    strides = [st for size, st in groups.seq if size > 1]
    return groups.num_groups == 1 and strides == sorted(strides, reverse=True)


class _PrefixedGroups(torch.autograd.Function):
    """:func:`prefixed_groups`. Keeps no tensor for backward (the groups and shapes only); recomputes nothing:
    backward copies the gradient back to token layout."""

    @staticmethod
    def forward(ctx, x, groups, n_prefix, keep_prefix):
        b, _, c = x.shape
        ng, s = groups.num_groups, groups.seq_len
        ctx.groups, ctx.n_prefix, ctx.keep_prefix, ctx.shape = groups, n_prefix, keep_prefix, x.shape
        p_out = n_prefix if keep_prefix else 0
        out = x.new_empty(b * ng, p_out + s, c)
        if p_out:
            out[:, :p_out].unflatten(0, (b, ng)).copy_(x[:, None, :n_prefix])
        _group_view(out[:, p_out:], groups, b).copy_(_token_view(x[:, n_prefix:], groups))
        return out

    @staticmethod
    def backward(ctx, g):
        groups, p = ctx.groups, ctx.n_prefix
        p_out = p if ctx.keep_prefix else 0
        b = ctx.shape[0]
        gx = g.new_empty(ctx.shape)
        if p_out:
            gx[:, :p] = g[:, :p].unflatten(0, (b, groups.num_groups)).sum(1)
        elif p:
            gx[:, :p] = 0
        _token_view(gx[:, p:], groups).copy_(_group_view(g[:, p_out:], groups, b))
        return gx, None, None, None


def prefixed_groups(x: torch.Tensor, groups, n_prefix: int, *, keep_prefix: bool = True) -> torch.Tensor:
    """x (b, P + M, C), P prefix rows then M patch tokens -> (b*groups, P + S, C): every group's tokens in
    sequence order, preceded by the P prefix rows (copied into each group), or (b*groups, S, C) without
    them (``keep_prefix=False``). One copy of x; backward: one copy, the prefix rows' gradients summed
    over the groups (or 0)."""
    if torch.compiler.is_exporting():
        return _prefixed_groups_traced(x, groups, n_prefix, keep_prefix)
    return _PrefixedGroups.apply(x, groups, n_prefix, keep_prefix)


def _mergeable(axes) -> bool:
    """Whether (size, stride) axes, outermost first, can be viewed as one axis."""
    axes = [a for a in axes if a[0] != 1]
    return all(outer[1] == inner[1] * inner[0] for outer, inner in zip(axes, axes[1:]))


def groups_are_views(groups, b: int, rows: int) -> bool:
    """Whether :meth:`TokenGroups.split` of the M patch rows of a contiguous (b, rows, ...) token buffer
    (rows >= M: prefix rows first) is a view: batch and group axes, and the seq axes, must each
    merge into one axis. Where not, grouping x before the projection copies less (x is 1/3 the width of
    q, k, v together)."""
    sizes, pg, ps = groups._plan
    strides = [1] * len(sizes)
    for i in range(len(sizes) - 2, -1, -1):
        strides[i] = strides[i + 1] * sizes[i + 1]
    return (_mergeable([(b, rows)] + [(sizes[i], strides[i]) for i in pg])
            and _mergeable([(sizes[i], strides[i]) for i in ps]))


class _TokensFromGroups(torch.autograd.Function):
    """:func:`tokens_from_groups`. Keeps no tensor for backward (the groups and shapes only); recomputes
    nothing: backward views or copies the gradient into the groups' layout."""

    @staticmethod
    def forward(ctx, y, groups, n_prefix, y_has_prefix, b):
        bg, h, sy, d = y.shape
        ng, s = groups.num_groups, groups.seq_len
        ctx.groups, ctx.n_prefix, ctx.y_has_prefix, ctx.b, ctx.y_shape = groups, n_prefix, y_has_prefix, b, y.shape
        out = y.new_empty(b, n_prefix + ng * s, h, d)
        yt = y.transpose(1, 2)  # (b*groups, Sy, h, d)
        p_y = n_prefix if y_has_prefix else 0
        if n_prefix and y_has_prefix:
            out[:, :n_prefix] = yt[:, :n_prefix].unflatten(0, (b, ng)).mean(1)
        elif n_prefix:
            out[:, :n_prefix] = 0
        _token_view(out[:, n_prefix:], groups).copy_(_group_view(yt[:, p_y:], groups, b))
        return out

    @staticmethod
    def backward(ctx, g):
        groups, p, b = ctx.groups, ctx.n_prefix, ctx.b
        ng = groups.num_groups
        bg, h, sy, d = ctx.y_shape
        if ctx.y_has_prefix and p:  # prefix rows and group rows meet in one gradient: one copy
            gy = g.new_empty(bg, sy, h, d)
            gy[:, :p].unflatten(0, (b, ng)).copy_(g[:, None, :p] / ng)
            _group_view(gy[:, p:], groups, b).copy_(_token_view(g[:, p:], groups))
        else:  # the patch rows of the gradient, regrouped: a view where strides allow
            gy = _token_view(g[:, p:], groups).reshape(bg, sy, h, d)
        return gy.transpose(1, 2), None, None, None, None


def tokens_from_groups(y: torch.Tensor, groups, b: int, n_prefix: int = 0, *, y_has_prefix: bool = False):
    """(b*groups, h, Sy, d) attention outputs -> (b, P + M, h, d) in token layout. With ``y_has_prefix``
    the first P rows of every group are the prefix queries' outputs and the prefix rows are their mean
    over the groups; otherwise Sy = S and the P prefix rows are 0. One copy (forward); backward: a view
    of the gradient, or one copy when prefix and group rows meet."""
    if torch.compiler.is_exporting():
        return _tokens_from_groups_traced(y, groups, n_prefix, y_has_prefix, b)
    return _TokensFromGroups.apply(y, groups, n_prefix, y_has_prefix, b)


# ---- the same two layout changes for torch.export / ONNX: no writes into a buffer -------------------------
# The Functions above write into slices and permuted views of a fresh buffer. torch.export turns those writes
# into slice_scatter / copy nodes, which ONNX export translates with sizes that do not hold at another batch
# (ONNX Runtime then fails in a ScatterND or Reshape). Under export the layer takes these instead: the same
# copies as cat / permute / reshape, the same numbers bit for bit (the prefix mean is the same reduction).
def _to_token_layout(g: torch.Tensor, groups, b: int) -> torch.Tensor:
    """(b, *group sizes, *seq sizes, *rest) -> (b, M, *rest): the inverse of :func:`_token_view`, a copy."""
    sizes, pg, ps = groups._plan
    k = len(sizes)
    order = [0, *[1 + i for i in pg], *[1 + i for i in ps]]  # the token view's permutation
    inverse = sorted(range(k + 1), key=order.__getitem__)
    rest = tuple(g.shape[k + 1:])
    return g.permute(*inverse, *range(k + 1, k + 1 + len(rest))).reshape(b, groups.num_tokens, *rest)


def _prefixed_groups_traced(x, groups, n_prefix, keep_prefix):
    b, _, c = x.shape
    ng, s = groups.num_groups, groups.seq_len
    sizes, pg, ps = groups._plan
    k = len(sizes)
    tokens = x[:, n_prefix:].reshape(b, *sizes, c).permute(0, *[1 + i for i in pg], *[1 + i for i in ps], k + 1)
    seq = tokens.reshape(b * ng, s, c)
    if not (keep_prefix and n_prefix):
        return seq
    prefix = x[:, None, :n_prefix].expand(b, ng, n_prefix, c).reshape(b * ng, n_prefix, c)
    return torch.cat([prefix, seq], 1)


def _tokens_from_groups_traced(y, groups, n_prefix, y_has_prefix, b):
    bg, h, sy, d = y.shape
    ng = groups.num_groups
    yt = y.transpose(1, 2)  # (b*groups, Sy, h, d)
    p_y = n_prefix if y_has_prefix else 0
    grouped = yt[:, p_y:].reshape(b, *[s for s, _ in groups.group], *[s for s, _ in groups.seq], h, d)
    out = _to_token_layout(grouped, groups, b)  # (b, M, h, d)
    if not n_prefix:
        return out
    if y_has_prefix:
        prefix = yt[:, :n_prefix].unflatten(0, (b, ng)).mean(1)
    else:
        prefix = out.new_zeros(b, n_prefix, h, d)
    return torch.cat([prefix, out], 1)


class _GroupedQKV(torch.autograd.Function):
    """:func:`grouped_qkv`. Keeps no tensor for backward (the groups and shapes only); recomputes nothing:
    backward writes the three gradients into one buffer."""

    @staticmethod
    def forward(ctx, qkv, groups, n_skip, heads):
        b, length, width = qkv.shape
        ctx.groups, ctx.n_skip, ctx.shape, ctx.heads = groups, n_skip, qkv.shape, heads
        parts = qkv[:, n_skip:].unflatten(-1, (3, heads, width // (3 * heads))).unbind(2)  # (b, M, h, d)
        return tuple(groups.split(t) for t in parts)  # (b*groups, h, S, d) strided views where possible

    @staticmethod
    def backward(ctx, *grads):
        groups, p, heads = ctx.groups, ctx.n_skip, ctx.heads
        b, length, width = ctx.shape
        g = grads[0] if grads[0] is not None else next(t for t in grads if t is not None)
        gqkv = g.new_empty(b, length, 3, heads, width // (3 * heads))
        if p:
            gqkv[:, :p].zero_()
        for i, gi in enumerate(grads):
            dst = _token_view(gqkv[:, p:, i], groups)  # (b, *groups, *seq, h, d)
            if gi is None:
                dst.zero_()
            else:
                dst.copy_(_group_view(gi.transpose(1, 2), groups, b))
        return gqkv.flatten(2), None, None, None


def grouped_qkv(qkv: torch.Tensor, groups, n_skip: int, heads: int):
    """The fused projection output (b, P + M, 3*h*d) -> q, k, v (b*groups, h, S, d) of the M patch
    tokens (the first ``n_skip`` rows left out), strided views where the groups allow. Backward: the
    three gradients written straight into one (b, P + M, 3*h*d) buffer, one copy in all (autograd
    would stack them, after copying each where its layout cannot be viewed back to tokens, and fill a
    zero buffer for the skipped rows)."""
    return _GroupedQKV.apply(qkv, groups, n_skip, heads)
