"""Fused softmax attention within groups of video tokens, read and written in token layout (Triton).

Layout. Every operand is a 5-D *view* ``(batch, groups, seq, heads, dim)`` with arbitrary strides, so the
kernels read the fused qkv projection's output ``(b, L, 3, heads, dim)`` where it lies::

    qkv = x @ W_qkv                                   # (b, f*n, 3, heads, dim), frames major
    q, k, v = qkv.unbind(2)                           # (b, f*n, heads, dim) strided views
    time:  q.unflatten(1, (f, n)).transpose(1, 2)     # (b, n groups, f seq, heads, dim), a view
    space: q.unflatten(1, (f, n))                     # (b, f groups, n seq, heads, dim), a view

An optional prefix ``prefix_k/prefix_v`` (batch, P, heads, dim) (the CLS token) is attended by every
group of its batch item. The output is written in the memory order of ``q`` (token order), or straight
into a given ``out`` view. Equivalent PyTorch code (see :mod:`.naive`)::

    k = cat([prefix_k per group, k], seq); v likewise
    out = softmax(q @ k^T * scale) @ v                # per (batch, group, head), fp32 softmax

Kernels. Softmax is exact (online, base 2) with fp32 accumulators; the natural log-sum-exp of each
query row is saved for backward. Two tilings:

* packed (both sequences <= ``PACK_LIMIT``, e.g. time with T = 8): one program holds ``GPB`` whole
  groups as one ``[GPB*Sq, GPB*Sk]`` block-diagonal tile, so ``tl.dot`` sees >= 16 rows without
  padding each group; the backward is a single fused kernel (dq, dk, dv in one pass, no atomics).
* flash (long sequences, e.g. space with N = 196): one program per query block of one group, looping
  over key blocks; backward = a delta pass, a dk/dv kernel and a dq kernel.

The prefix's dk/dv (a sum over every query of every group) are written as per-program fp32 partials
and summed by torch: deterministic. Plain pointer arithmetic only (Triton 3.6 .. 3.9).

Entry points: :func:`divided_attention` (5-D views), :func:`divided_attention_qkv` (a whole fused
projection output; its backward writes the projection's gradient in one buffer), :func:`attention_4d`
(the backend registry's (B, heads, S, d) contract). All go through ``torch.library`` custom ops
(``fast_timesformer::grouped_attention*``) with fake implementations and registered autograd, except
inference into ``out`` outside ``torch.compile``, which launches directly.

Set ``TRITON_INTERPRET=1`` before importing this module to run on CPU tensors (slowly; fp32/fp16
only: the interpreter has no bfloat16 arithmetic).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["divided_attention", "divided_attention_qkv", "fused_qkv_source", "attention_4d", "token_view", "INTERPRETED", "PACK_LIMIT", "MAX_HEAD_DIM",
           "SUPPORTED_DTYPES", "check_arguments"]

try:  # triton >= 3.4 reads its settings through ``knobs``; older versions read the variable directly
    from triton import knobs as _knobs

    INTERPRETED = bool(_knobs.runtime.interpret)
except (ImportError, AttributeError):  # pragma: no cover
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

MAX_HEAD_DIM = 128
PACK_LIMIT = 64  # sequences up to this length are packed several groups per program
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
# Addressing: the per-program part of every offset (batch, head, first group) is a 64-bit scalar; the
# per-element part inside a tile is 32-bit, so the [BM, BD] pointer tiles cost one 64-bit add each.
@triton.jit
def _tile(r, start, g0, G, S, GPB, PACKED: tl.constexpr):
    """Tile positions ``r`` -> (group relative to g0, position in the group, valid).

    packed: position r is group g0 + r // S, element r % S (GPB groups per tile);
    flash:  position r is element start + r of group g0.
    """
    if PACKED:
        gl = r // S
        s = r - gl * S
        ok = (gl < GPB) & (g0 + gl < G)
    else:
        gl = r * 0
        s = start + r
        ok = s < S
    return gl, s, ok


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc, PREC: tl.constexpr):
    """One online-softmax update with scores ``s`` [BM, BN] (base-2, masked = -inf) and values v [BN, BD]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])  # [BM, BN]
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _fwd_kernel(Q, K, V, PK, PV, O, LSE,
                sqb, sqg, sqs, sqh, sqd, skb, skg, sks, skh, skd, svb, svg, svs, svh, svd,
                sob, sog, sos, soh, sod, spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd,
                G, SQ, SK, P, D, H, GPB, N_MB, qk_scale,
                PACKED: tl.constexpr, HAS_PREFIX: tl.constexpr, STORE_LSE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                PREC: tl.constexpr):
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    if PACKED:
        g0 = tile * GPB
        m0 = 0
    else:
        g0 = tile // N_MB
        m0 = (tile % N_MB) * BLOCK_M
    gb = g0.to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    qg, qs, q_ok = _tile(tl.arange(0, BLOCK_M), m0, g0, G, SQ, GPB, PACKED)
    q_mask = q_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + gb * sqg + (qg[:, None] * sqg + qs[:, None] * sqs + rd[None, :] * sqd),
                mask=q_mask, other=0.0)  # [BM, BD]
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_PREFIX:  # the shared prefix (CLS) keys first
        rp = tl.arange(0, BLOCK_P)
        p_ok = rp < P
        p_mask = p_ok[:, None] & d_ok[None, :]
        pk = tl.load(PK + b * spkb + h * spkh + (rp[:, None] * spkp + rd[None, :] * spkd), mask=p_mask, other=0.0)
        pv = tl.load(PV + b * spvb + h * spvh + (rp[:, None] * spvp + rd[None, :] * spvd), mask=p_mask, other=0.0)
        sp = tl.dot(q, tl.trans(pk), input_precision=PREC) * qk_scale  # [BM, BP]
        sp = tl.where(p_ok[None, :], sp, float("-inf"))
        m_i, l_i, acc = _softmax_step(sp, pv, m_i, l_i, acc, PREC)
    if PACKED:
        n_end = BLOCK_N
    else:
        n_end = SK
    Kb = K + b * skb + h * skh + gb * skg
    Vb = V + b * svb + h * svh + gb * svg
    for n0 in range(0, n_end, BLOCK_N):
        kg, ks, k_ok = _tile(tl.arange(0, BLOCK_N), n0, g0, G, SK, GPB, PACKED)
        kv_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(Kb + (kg[:, None] * skg + ks[:, None] * sks + rd[None, :] * skd), mask=kv_mask, other=0.0)
        v = tl.load(Vb + (kg[:, None] * svg + ks[:, None] * svs + rd[None, :] * svd), mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BM, BN]
        s = tl.where(k_ok[None, :] & (kg[None, :] == qg[:, None]), s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc, PREC)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    tl.store(O + b * sob + h * soh + gb * sog + (qg[:, None] * sog + qs[:, None] * sos + rd[None, :] * sod),
             o.to(O.dtype.element_ty), mask=q_mask)
    if STORE_LSE:  # natural-log LSE of the scaled scores, (batch, heads, groups, Sq) contiguous
        lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
        tl.store(LSE + ((b * H + h) * G + gb) * SQ + (qg * SQ + qs), lse, mask=q_ok)


@triton.jit
def _prefix_grads(q, do, lse2, delta, q_ok, PK, PV, DPK, DPV, b, h, tile, N_TILES,
                  spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd, P, D, H, sm_scale, qk_scale,
                  BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """The prefix keys' share for one query tile: returns its dq term [BM, BD] (unscaled) and stores this
    tile's partial dk/dv of the prefix into DPK/DPV (batch, heads, tiles, P, D) fp32."""
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    rp = tl.arange(0, BLOCK_P)
    p_ok = rp < P
    p_mask = p_ok[:, None] & d_ok[None, :]
    pk = tl.load(PK + b * spkb + h * spkh + (rp[:, None] * spkp + rd[None, :] * spkd), mask=p_mask, other=0.0)
    pv = tl.load(PV + b * spvb + h * spvh + (rp[:, None] * spvp + rd[None, :] * spvd), mask=p_mask, other=0.0)
    s = tl.dot(q, tl.trans(pk), input_precision=PREC) * qk_scale  # [BM, BP]
    p = tl.where(q_ok[:, None] & p_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
    dpv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)  # [BP, BD]
    dp = tl.dot(do, tl.trans(pv), input_precision=PREC)  # [BM, BP]
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(pk.dtype), pk, input_precision=PREC)  # [BM, BD]
    dpk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale  # [BP, BD]
    base = ((b * H + h) * N_TILES + tile) * P * D
    off = rp[:, None] * D + rd[None, :]
    tl.store(DPK + base + off, dpk, mask=p_mask)
    tl.store(DPV + base + off, dpv, mask=p_mask)
    return dq


@triton.jit
def _bwd_packed_kernel(Q, K, V, O, DO, LSE, PK, PV, DQ, DK, DV, DPK, DPV,
                       sqb, sqg, sqs, sqh, sqd, skb, skg, sks, skh, skd, svb, svg, svs, svh, svd,
                       sob, sog, sos, soh, sod, sdob, sdog, sdos, sdoh, sdod,
                       sdqb, sdqg, sdqs, sdqh, sdqd, sdkb, sdkg, sdks, sdkh, sdkd, sdvb, sdvg, sdvs, sdvh, sdvd,
                       spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd,
                       G, SQ, SK, P, D, H, GPB, N_TILES, sm_scale, qk_scale,
                       HAS_PREFIX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """dq, dk, dv of GPB whole groups in one pass (every key belongs to exactly one program)."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g0 = tile * GPB
    gb = g0.to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    qg, qs, q_ok = _tile(tl.arange(0, BLOCK_M), 0, g0, G, SQ, GPB, True)
    kg, ks, k_ok = _tile(tl.arange(0, BLOCK_N), 0, g0, G, SK, GPB, True)
    q_mask = q_ok[:, None] & d_ok[None, :]
    k_mask = k_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + gb * sqg + (qg[:, None] * sqg + qs[:, None] * sqs + rd[None, :] * sqd),
                mask=q_mask, other=0.0)  # [BM, BD]
    do = tl.load(DO + b * sdob + h * sdoh + gb * sdog + (qg[:, None] * sdog + qs[:, None] * sdos + rd[None, :] * sdod),
                 mask=q_mask, other=0.0)  # [BM, BD]
    o = tl.load(O + b * sob + h * soh + gb * sog + (qg[:, None] * sog + qs[:, None] * sos + rd[None, :] * sod),
                mask=q_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # [BM]
    lse2 = tl.load(LSE + ((b * H + h) * G + gb) * SQ + (qg * SQ + qs), mask=q_ok, other=0.0) * 1.4426950408889634
    k = tl.load(K + b * skb + h * skh + gb * skg + (kg[:, None] * skg + ks[:, None] * sks + rd[None, :] * skd),
                mask=k_mask, other=0.0)  # [BN, BD]
    v = tl.load(V + b * svb + h * svh + gb * svg + (kg[:, None] * svg + ks[:, None] * svs + rd[None, :] * svd),
                mask=k_mask, other=0.0)  # [BN, BD]
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BM, BN]
    valid = q_ok[:, None] & k_ok[None, :] & (qg[:, None] == kg[None, :])
    p = tl.where(valid, tl.exp2(s - lse2[:, None]), 0.0)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)  # [BN, BD]
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [BM, BN]
    ds = p * (dp - delta[:, None])
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale  # [BN, BD]
    dq = tl.dot(ds.to(k.dtype), k, input_precision=PREC)  # [BM, BD]
    if HAS_PREFIX:
        dq += _prefix_grads(q, do, lse2, delta, q_ok, PK, PV, DPK, DPV, b, h, tile, N_TILES,
                            spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd, P, D, H, sm_scale, qk_scale,
                            BLOCK_P, BLOCK_D, PREC)
    tl.store(DQ + b * sdqb + h * sdqh + gb * sdqg + (qg[:, None] * sdqg + qs[:, None] * sdqs + rd[None, :] * sdqd),
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)
    tl.store(DK + b * sdkb + h * sdkh + gb * sdkg + (kg[:, None] * sdkg + ks[:, None] * sdks + rd[None, :] * sdkd),
             dk.to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV + b * sdvb + h * sdvh + gb * sdvg + (kg[:, None] * sdvg + ks[:, None] * sdvs + rd[None, :] * sdvd),
             dv.to(DV.dtype.element_ty), mask=k_mask)


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, sob, sog, sos, soh, sod, sdob, sdog, sdos, sdoh, sdod,
                      G, SQ, D, H, N_MB, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(dO * O), (batch, heads, groups, Sq) fp32."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = (tile // N_MB).to(tl.int64)
    qs = (tile % N_MB) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = qs < SQ
    rd = tl.arange(0, BLOCK_D)
    mask = q_ok[:, None] & (rd < D)[None, :]
    o = tl.load(O + b * sob + h * soh + g * sog + (qs[:, None] * sos + rd[None, :] * sod), mask=mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + g * sdog + (qs[:, None] * sdos + rd[None, :] * sdod), mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + ((b * H + h) * G + g) * SQ + qs, delta, mask=q_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     sqb, sqg, sqs, sqh, sqd, skb, skg, sks, skh, skd, svb, svg, svs, svh, svd,
                     sdob, sdog, sdos, sdoh, sdod, sdkb, sdkg, sdks, sdkh, sdkd, sdvb, sdvg, sdvs, sdvh, sdvd,
                     G, SQ, SK, D, H, N_NB, sm_scale, qk_scale,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """dk, dv of one key block of one group, looping over the group's query blocks."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = (tile // N_NB).to(tl.int64)
    ks = (tile % N_NB) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = ks < SK
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    k_mask = k_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * skb + h * skh + g * skg + (ks[:, None] * sks + rd[None, :] * skd), mask=k_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + g * svg + (ks[:, None] * svs + rd[None, :] * svd), mask=k_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    Qb = Q + b * sqb + h * sqh + g * sqg
    DOb = DO + b * sdob + h * sdoh + g * sdog
    row0 = ((b * H + h) * G + g) * SQ
    for m0 in range(0, SQ, BLOCK_M):
        qs = m0 + tl.arange(0, BLOCK_M)
        q_ok = qs < SQ
        q_mask = q_ok[:, None] & d_ok[None, :]
        q = tl.load(Qb + (qs[:, None] * sqs + rd[None, :] * sqd), mask=q_mask, other=0.0)  # [BM, BD]
        do = tl.load(DOb + (qs[:, None] * sdos + rd[None, :] * sdod), mask=q_mask, other=0.0)  # [BM, BD]
        lse2 = tl.load(LSE + row0 + qs, mask=q_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row0 + qs, mask=q_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BM, BN]
        p = tl.where(q_ok[:, None] & k_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [BM, BN]
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    tl.store(DK + b * sdkb + h * sdkh + g * sdkg + (ks[:, None] * sdks + rd[None, :] * sdkd),
             (dk * sm_scale).to(DK.dtype.element_ty), mask=k_mask)
    tl.store(DV + b * sdvb + h * sdvh + g * sdvg + (ks[:, None] * sdvs + rd[None, :] * sdvd),
             dv.to(DV.dtype.element_ty), mask=k_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, PK, PV, DQ, DPK, DPV,
                   sqb, sqg, sqs, sqh, sqd, skb, skg, sks, skh, skd, svb, svg, svs, svh, svd,
                   sdob, sdog, sdos, sdoh, sdod, sdqb, sdqg, sdqs, sdqh, sdqd,
                   spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd,
                   G, SQ, SK, P, D, H, N_MB, N_TILES, sm_scale, qk_scale,
                   HAS_PREFIX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    """dq of one query block of one group (looping over the group's key blocks) and its prefix share."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = (tile // N_MB).to(tl.int64)
    qs = (tile % N_MB) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_ok = qs < SQ
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    q_mask = q_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + g * sqg + (qs[:, None] * sqs + rd[None, :] * sqd), mask=q_mask, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + g * sdog + (qs[:, None] * sdos + rd[None, :] * sdod), mask=q_mask,
                 other=0.0)
    row0 = ((b * H + h) * G + g) * SQ
    lse2 = tl.load(LSE + row0 + qs, mask=q_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row0 + qs, mask=q_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    Kb = K + b * skb + h * skh + g * skg
    Vb = V + b * svb + h * svh + g * svg
    for n0 in range(0, SK, BLOCK_N):
        ks = n0 + tl.arange(0, BLOCK_N)
        k_ok = ks < SK
        k_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(Kb + (ks[:, None] * sks + rd[None, :] * skd), mask=k_mask, other=0.0)
        v = tl.load(Vb + (ks[:, None] * svs + rd[None, :] * svd), mask=k_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.where(q_ok[:, None] & k_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    if HAS_PREFIX:
        dq += _prefix_grads(q, do, lse2, delta, q_ok, PK, PV, DPK, DPV, b, h, tile, N_TILES,
                            spkb, spkp, spkh, spkd, spvb, spvp, spvh, spvd, P, D, H, sm_scale, qk_scale,
                            BLOCK_P, BLOCK_D, PREC)
    tl.store(DQ + b * sdqb + h * sdqh + g * sdqg + (qs[:, None] * sdqs + rd[None, :] * sdqd),
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------------------------------------
# launch plans
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    packed: bool
    block_m: int
    block_n: int
    block_p: int
    block_d: int
    gpb: int  # groups per program (packed)
    n_mb: int  # query blocks per group (flash)
    n_nb: int  # key blocks per group (flash)
    n_tiles: int  # programs along grid axis 0
    num_warps: int
    num_stages: int


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def _packed_plan(G, SQ, SK, P, D, rows: int, warps: Optional[int] = None) -> _Plan:
    """GPB whole groups per program, about ``rows`` query rows."""
    block_d, block_p = _pow2(D), _pow2(max(P, 1))
    gpb = max(1, min(rows // SQ, rows // SK, G))
    bm, bn = _pow2(gpb * SQ), _pow2(gpb * SK)
    if warps is None:
        warps = 4 if max(bm, bn) * block_d < 64 * 64 else 8
    return _Plan(True, bm, bn, block_p, block_d, gpb, 1, 1, triton.cdiv(G, gpb), warps, 1)


def _flash_plan(G, SQ, SK, P, D, bm: int, bn: int, warps: Optional[int] = None, stages: int = 2) -> _Plan:
    """One query block of one group per program, looping over key blocks of ``bn``."""
    block_d, block_p = _pow2(D), _pow2(max(P, 1))
    bm = min(bm, _pow2(SQ))  # a single query (the CLS row) needs no 64-row tile
    n_mb, n_nb = triton.cdiv(SQ, bm), triton.cdiv(SK, bn)
    if warps is None:
        warps = 4 if bm * block_d < 4096 else 8
    return _Plan(False, bm, bn, block_p, block_d, 1, n_mb, n_nb, G * n_mb, warps, stages)


def _plan(G: int, SQ: int, SK: int, P: int, D: int, pack_limit: Optional[int] = None,
          fp32_gpu: bool = False) -> _Plan:
    """Default tiles. Packed rows target 64 (a 64x64 fp32 score tile in registers; 32 for d > 64); flash
    tiles are 64x64 (128 query rows for d <= 64 on long sequences). fp32 inputs on a GPU (exact fp32 dots,
    no tensor cores) use 32x32 flash tiles with 8 warps: larger ones spill registers on sm_90 (ptxas, see
    benchmarks/compile_check.py). Not tuned on a GPU yet: set FAST_TIMESFORMER_TRITON_AUTOTUNE=1 to time
    the candidates of :func:`_candidates` per shape."""
    if fp32_gpu:
        return _flash_plan(G, SQ, SK, P, D, 32, 32, 8, 2)
    if max(SQ, SK) <= (PACK_LIMIT if pack_limit is None else pack_limit):
        return _packed_plan(G, SQ, SK, P, D, 64 if _pow2(D) <= 64 else 32)
    return _flash_plan(G, SQ, SK, P, D, 128 if (_pow2(D) <= 64 and SQ >= 512) else 64, 64)


def _candidates(G, SQ, SK, P, D) -> list:
    """Plans the autotuner times (the default first). Packed ones only where groups fit a tile."""
    out = [_plan(G, SQ, SK, P, D)]
    if max(SQ, SK) <= 128:
        out += [_packed_plan(G, SQ, SK, P, D, rows, warps) for rows in (32, 64, 128) for warps in (4, 8)
                if rows >= max(SQ, SK)]
    out += [_flash_plan(G, SQ, SK, P, D, bm, bn, warps, stages)
            for bm in (64, 128) for bn in (32, 64) for warps in (4, 8) for stages in (1, 2, 3)
            if not (bm == 128 and _pow2(D) > 64)]
    return list(dict.fromkeys(out))


def _bwd_warps(pl: _Plan) -> int:
    """Backward tiles hold several [BM, BN] fp32 blocks at once: more warps to keep them in registers."""
    return 8 if pl.block_m * pl.block_n >= 64 * 64 or pl.block_d >= 128 or pl.num_warps >= 8 else 4


AUTOTUNE = os.environ.get("FAST_TIMESFORMER_TRITON_AUTOTUNE", "0").lower() in ("1", "true", "on", "yes")
_TUNED: dict = {}  # (step, device name, shapes, dtype) -> the fastest plan


def _time_ms(fn, device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))
    fn()  # CPU (interpreter): tests of the mechanics only
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _choose(step: str, q, k, prefix_k, run, candidates=None) -> _Plan:
    """The default plan, or with AUTOTUNE the fastest candidate for this shape (timed once, cached)."""
    b, G, SQ, H, D = q.shape
    SK, P = k.shape[2], 0 if prefix_k is None else prefix_k.shape[1]
    if not AUTOTUNE:
        return _plan(G, SQ, SK, P, D, fp32_gpu=q.dtype == torch.float32 and q.device.type == "cuda")
    dev = torch.cuda.get_device_name(q.device) if q.device.type == "cuda" else "cpu"
    key = (step, dev, b, G, SQ, SK, P, H, D, q.dtype)
    if key not in _TUNED:
        best, best_ms = None, float("inf")
        for pl in candidates or _candidates(G, SQ, SK, P, D):
            try:
                ms = _time_ms(lambda: run(pl), q.device)
            except Exception:  # e.g. out of shared memory for this tile on this GPU
                continue
            if ms < best_ms:
                best, best_ms = pl, ms
        if best is None:
            raise RuntimeError(f"no kernel plan ran for {key}")
        _TUNED[key] = best
    return _TUNED[key]


def _prec(dtype):
    """fp32 inputs use exact fp32 products (no TF32): the backend is declared exact."""
    return "ieee" if dtype == torch.float32 else None


def _alloc(shape, like: torch.Tensor, seq_major: bool, dtype=None) -> torch.Tensor:
    """A fresh (batch, groups, seq, heads, dim) tensor whose memory is in token order: group-major
    (space: token = g*S + s) or seq-major (time: token = s*G + g)."""
    b, g, s, h, d = shape
    dtype = like.dtype if dtype is None else dtype
    if seq_major:
        return torch.empty((b, s, g, h, d), dtype=dtype, device=like.device).transpose(1, 2)
    return torch.empty((b, g, s, h, d), dtype=dtype, device=like.device)


def _strides(t: Optional[torch.Tensor], n: int):
    return tuple(t.stride()) if t is not None else (0,) * n


def _forward(q, k, v, prefix_k, prefix_v, scale: float, seq_major: bool, out=None, store_lse: bool = True,
             plan: Optional[_Plan] = None):
    b, G, SQ, H, D = q.shape
    SK = k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[1]
    o = _alloc(q.shape, q, seq_major) if out is None else out
    lse = torch.empty((b, H, G, SQ) if store_lse else (1,), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    pl = plan or _choose("fwd", q, k, prefix_k, lambda c: _forward(q, k, v, prefix_k, prefix_v, scale, seq_major,
                                                                   o, store_lse, c))
    has_p = prefix_k is not None
    _fwd_kernel[(pl.n_tiles, H, b)](
        q, k, v, prefix_k if has_p else q, prefix_v if has_p else q, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *_strides(prefix_k, 4), *_strides(prefix_v, 4),
        G, SQ, SK, P, D, H, pl.gpb, pl.n_mb, scale * LOG2E,
        PACKED=pl.packed, HAS_PREFIX=has_p, STORE_LSE=store_lse,
        BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, BLOCK_P=pl.block_p, BLOCK_D=pl.block_d, PREC=_prec(q.dtype),
        num_warps=pl.num_warps, num_stages=pl.num_stages)
    return o, lse


def _backward(do, q, k, v, prefix_k, prefix_v, o, lse, scale: float, seq_major: bool,
              plan: Optional[_Plan] = None, grads=None):
    """dq, dk, dv (fresh, in token order, or written into the views ``grads``) and the prefix's dk, dv."""
    b, G, SQ, H, D = q.shape
    SK = k.shape[2]
    has_p = prefix_k is not None
    P = prefix_k.shape[1] if has_p else 0
    if grads is None:
        dq, dk, dv = _alloc(q.shape, q, seq_major), _alloc(k.shape, k, seq_major), _alloc(v.shape, v, seq_major)
    else:
        dq, dk, dv = grads
    if q.numel() == 0:
        z = torch.zeros(prefix_k.shape, dtype=q.dtype, device=q.device) if has_p else q.new_empty(0)
        return dq, dk.zero_(), dv.zero_(), z, z.clone()
    pl = plan or _choose("bwd", q, k, prefix_k,
                         lambda c: _backward(do, q, k, v, prefix_k, prefix_v, o, lse, scale, seq_major, c,
                                             (dq, dk, dv)))
    part_shape = (b, H, pl.n_tiles, P, D) if has_p else (1,)
    dpk_part = torch.empty(part_shape, dtype=torch.float32, device=q.device)
    dpv_part = torch.empty(part_shape, dtype=torch.float32, device=q.device)
    pk, pv = (prefix_k, prefix_v) if has_p else (q, q)
    common = dict(HAS_PREFIX=has_p, BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, BLOCK_P=pl.block_p,
                  BLOCK_D=pl.block_d, PREC=_prec(q.dtype), num_warps=_bwd_warps(pl), num_stages=1)
    grid = (pl.n_tiles, H, b)
    if pl.packed:
        _bwd_packed_kernel[grid](
            q, k, v, o, do, lse, pk, pv, dq, dk, dv, dpk_part, dpv_part,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(),
            *dq.stride(), *dk.stride(), *dv.stride(), *_strides(prefix_k, 4), *_strides(prefix_v, 4),
            G, SQ, SK, P, D, H, pl.gpb, pl.n_tiles, scale, scale * LOG2E, **common)
    else:
        delta = torch.empty((b, H, G, SQ), dtype=torch.float32, device=q.device)
        _bwd_delta_kernel[grid](o, do, delta, *o.stride(), *do.stride(), G, SQ, D, H, pl.n_mb,
                                BLOCK_M=pl.block_m, BLOCK_D=pl.block_d, num_warps=pl.num_warps)
        _bwd_dkdv_kernel[(G * pl.n_nb, H, b)](
            q, k, v, do, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            G, SQ, SK, D, H, pl.n_nb, scale, scale * LOG2E,
            BLOCK_M=pl.block_m, BLOCK_N=pl.block_n, BLOCK_D=pl.block_d, PREC=_prec(q.dtype),
            num_warps=_bwd_warps(pl), num_stages=1)
        _bwd_dq_kernel[grid](
            q, k, v, do, lse, delta, pk, pv, dq, dpk_part, dpv_part,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            *_strides(prefix_k, 4), *_strides(prefix_v, 4),
            G, SQ, SK, P, D, H, pl.n_mb, pl.n_tiles, scale, scale * LOG2E, **common)
    if has_p:  # (b, H, tiles, P, D) partial sums -> (b, P, H, D)
        dpk = dpk_part.sum(2).transpose(1, 2).contiguous().to(prefix_k.dtype)
        dpv = dpv_part.sum(2).transpose(1, 2).contiguous().to(prefix_v.dtype)
    else:
        dpk, dpv = q.new_empty(0), q.new_empty(0)
    return dq, dk, dv, dpk, dpv


# ---------------------------------------------------------------------------------------------------
# torch.library ops: the autograd graph and torch.compile see these, never the Triton launches
# ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("fast_timesformer::grouped_attention", mutates_args=())
def _op_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: Optional[torch.Tensor],
                prefix_v: Optional[torch.Tensor], scale: float, seq_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, prefix_k, prefix_v, scale, seq_major)


@_op_forward.register_fake
def _(q, k, v, prefix_k, prefix_v, scale, seq_major):
    b, G, SQ, H, _ = q.shape
    return _alloc(q.shape, q, seq_major), q.new_empty((b, H, G, SQ), dtype=torch.float32)


@torch.library.custom_op("fast_timesformer::grouped_attention_backward", mutates_args=())
def _op_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 prefix_k: Optional[torch.Tensor], prefix_v: Optional[torch.Tensor], o: torch.Tensor,
                 lse: torch.Tensor, scale: float, seq_major: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(do, q, k, v, prefix_k, prefix_v, o, lse, scale, seq_major)


@_op_backward.register_fake
def _(do, q, k, v, prefix_k, prefix_v, o, lse, scale, seq_major):
    dp = (torch.empty_like(prefix_k, memory_format=torch.contiguous_format),
          torch.empty_like(prefix_v, memory_format=torch.contiguous_format)) if prefix_k is not None \
        else (q.new_empty(0), q.new_empty(0))
    return _alloc(q.shape, q, seq_major), _alloc(k.shape, k, seq_major), _alloc(v.shape, v, seq_major), *dp


def _setup_context(ctx, inputs, output):
    q, k, v, prefix_k, prefix_v, scale, seq_major = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, prefix_k, prefix_v, o, lse)
    ctx.scale, ctx.seq_major, ctx.has_prefix = scale, seq_major, prefix_k is not None


def _op_forward_grad(ctx, do, _dlse):
    q, k, v, prefix_k, prefix_v, o, lse = ctx.saved_tensors
    dq, dk, dv, dpk, dpv = _op_backward(do, q, k, v, prefix_k, prefix_v, o, lse, ctx.scale, ctx.seq_major)
    if not ctx.has_prefix:
        dpk = dpv = None
    return dq, dk, dv, dpk, dpv, None, None


_op_forward.register_autograd(_op_forward_grad, setup_context=_setup_context)


@torch.library.custom_op("fast_timesformer::grouped_attention_out", mutates_args=("out",))
def _op_forward_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: Optional[torch.Tensor],
                    prefix_v: Optional[torch.Tensor], out: torch.Tensor, scale: float) -> None:
    """Inference: write straight into ``out`` (a strided view of the layer's buffer); no LSE kept."""
    _forward(q, k, v, prefix_k, prefix_v, scale, False, out=out, store_lse=False)


@_op_forward_out.register_fake
def _(q, k, v, prefix_k, prefix_v, out, scale):
    return None


# The same on a whole fused projection output (b, M, 3*heads*d): the backward writes dq, dk, dv into
# one (b, M, 3*heads*d) gradient, so autograd need not stack three gradients into the projection's.
def _qkv_views(qkv: torch.Tensor, heads: int, group, seq):
    d = qkv.shape[-1] // (3 * heads)
    return tuple(token_view(t, tuple(group), tuple(seq)) for t in qkv.unflatten(-1, (3, heads, d)).unbind(2))


@torch.library.custom_op("fast_timesformer::grouped_attention_qkv", mutates_args=())
def _op_qkv_forward(qkv: torch.Tensor, prefix_k: Optional[torch.Tensor], prefix_v: Optional[torch.Tensor],
                    heads: int, group: list[int], seq: list[int], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _qkv_views(qkv, heads, group, seq)
    return _forward(q, k, v, prefix_k, prefix_v, scale, _seq_major(q))


@_op_qkv_forward.register_fake
def _(qkv, prefix_k, prefix_v, heads, group, seq, scale):
    q, _, _ = _qkv_views(qkv, heads, group, seq)
    b, G, SQ, H, _ = q.shape
    return _alloc(q.shape, q, _seq_major(q)), q.new_empty((b, H, G, SQ), dtype=torch.float32)


@torch.library.custom_op("fast_timesformer::grouped_attention_qkv_backward", mutates_args=())
def _op_qkv_backward(do: torch.Tensor, qkv: torch.Tensor, prefix_k: Optional[torch.Tensor],
                     prefix_v: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, heads: int,
                     group: list[int], seq: list[int], scale: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _qkv_views(qkv, heads, group, seq)
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    _, _, _, dpk, dpv = _backward(do, q, k, v, prefix_k, prefix_v, o, lse, scale, _seq_major(q),
                                  grads=_qkv_views(dqkv, heads, group, seq))
    return dqkv, dpk, dpv


@_op_qkv_backward.register_fake
def _(do, qkv, prefix_k, prefix_v, o, lse, heads, group, seq, scale):
    dp = (torch.empty_like(prefix_k, memory_format=torch.contiguous_format),
          torch.empty_like(prefix_v, memory_format=torch.contiguous_format)) if prefix_k is not None \
        else (qkv.new_empty(0), qkv.new_empty(0))
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device), *dp


def _setup_qkv(ctx, inputs, output):
    qkv, prefix_k, prefix_v, heads, group, seq, scale = inputs
    ctx.save_for_backward(qkv, prefix_k, prefix_v, *output)
    ctx.args, ctx.has_prefix = (heads, group, seq, scale), prefix_k is not None


def _op_qkv_forward_grad(ctx, do, _dlse):
    qkv, prefix_k, prefix_v, o, lse = ctx.saved_tensors
    dqkv, dpk, dpv = _op_qkv_backward(do, qkv, prefix_k, prefix_v, o, lse, *ctx.args)
    if not ctx.has_prefix:
        dpk = dpv = None
    return dqkv, dpk, dpv, None, None, None, None


_op_qkv_forward.register_autograd(_op_qkv_forward_grad, setup_context=_setup_qkv)


# ---------------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------------
def check_arguments(q, k, v, prefix_k=None, prefix_v=None, out=None) -> list[str]:
    """Problems with the arguments of :func:`divided_attention`, in words ([] = fine)."""
    r = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor, got {type(t).__name__}"]
        if t.dim() != 5:
            r.append(f"{name} must be 5-D (batch, groups, seq, heads, dim), got shape {tuple(t.shape)}")
    if r:
        return r
    if not (q.dtype == k.dtype == v.dtype):
        r.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        r.append(f"dtype {q.dtype} not supported (float32, float16, bfloat16)")
    if not (q.device == k.device == v.device):
        r.append(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type == "cpu" and not INTERPRETED:
        r.append("Triton kernels need a CUDA GPU (set TRITON_INTERPRET=1 before importing "
                 "fast_timesformer.kernels to run on CPU, slowly, for tests)")
    elif q.device.type not in ("cpu", "cuda"):
        r.append(f"device {q.device.type!r} not supported (cuda, or cpu under TRITON_INTERPRET=1)")
    if INTERPRETED and q.dtype == torch.bfloat16:
        r.append("bfloat16 is not supported by the Triton interpreter (no bf16 arithmetic on CPU)")
    if k.shape != v.shape:
        r.append(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if (q.shape[0], q.shape[1], q.shape[3], q.shape[4]) != (k.shape[0], k.shape[1], k.shape[3], k.shape[4]):
        r.append(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, groups, heads and dim")
    if q.shape[4] > MAX_HEAD_DIM:
        r.append(f"head dim {q.shape[4]} > {MAX_HEAD_DIM}")
    if q.shape[3] > 65535 or q.shape[0] > 65535:
        r.append(f"batch ({q.shape[0]}) and heads ({q.shape[3]}) must each be <= 65535 (CUDA grid limit)")
    if (prefix_k is None) != (prefix_v is None):
        r.append("prefix_k and prefix_v must be given together")
    elif prefix_k is not None:
        want = (q.shape[0], prefix_k.shape[1] if prefix_k.dim() == 4 else -1, q.shape[3], q.shape[4])
        for name, t in (("prefix_k", prefix_k), ("prefix_v", prefix_v)):
            if t.dim() != 4 or tuple(t.shape) != want:
                r.append(f"{name} must be (batch, P, heads, dim) = {want}, got {tuple(t.shape)}")
            elif t.dtype != q.dtype or t.device != q.device:
                r.append(f"{name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
    if out is not None:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(q.shape):
            r.append(f"out must have q's shape {tuple(q.shape)}, got "
                     f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        elif out.dtype != q.dtype or out.device != q.device:
            r.append(f"out is {out.dtype} on {out.device}, q is {q.dtype} on {q.device}")
    return r


def _write_out(q, k, v, prefix_k, prefix_v, out, scale):
    """Inference into ``out``: through the custom op where a graph is traced, else launched directly
    (the torch.library dispatcher costs tens of microseconds per call in eager mode)."""
    if torch.compiler.is_compiling():
        _op_forward_out(q, k, v, prefix_k, prefix_v, out, scale)
    else:
        _forward(q, k, v, prefix_k, prefix_v, scale, False, out=out, store_lse=False)


def _seq_major(q: torch.Tensor) -> bool:
    """Whether q's tokens lie seq-major (time groups: the group index moves fastest)."""
    return q.shape[1] > 1 and q.shape[2] > 1 and 0 < q.stride(1) < q.stride(2)


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def divided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      prefix_k: Optional[torch.Tensor] = None, prefix_v: Optional[torch.Tensor] = None, *,
                      scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention within groups of tokens, on strided views of token layout.

    Args:
        q: (batch, groups, Sq, heads, dim); k, v: (batch, groups, Sk, heads, dim). Any strides (e.g. views
            of a fused qkv projection, see :func:`token_view`); float32, float16 or bfloat16; dim <= 128.
        prefix_k, prefix_v: optional (batch, P, heads, dim) keys/values attended by every group (CLS).
        scale: score scale, default dim ** -0.5.
        out: optional (batch, groups, Sq, heads, dim) view to write into (e.g. a slice of the layer's
            output buffer). Without autograd the kernel stores there directly; with autograd the result
            is computed by the differentiable op and copied in (``out`` then carries the gradient).

    Returns the output (batch, groups, Sq, heads, dim), laid out in q's token order (or ``out``).

    Equivalent PyTorch code (:func:`fast_timesformer.kernels.naive.divided_attention`)::

        k = cat([prefix_k, k_g], seq) and v likewise for every group g
        out = softmax(q @ k.transpose(-1, -2) * scale, -1) @ v
    """
    problems = check_arguments(q, k, v, prefix_k, prefix_v, out)
    if problems:
        raise ValueError("divided_attention: " + "; ".join(problems))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if out is not None and not _needs_grad(q, k, v, prefix_k, prefix_v, out):
        _write_out(q, k, v, prefix_k, prefix_v, out, scale)
        return out
    o, _ = _op_forward(q, k, v, prefix_k, prefix_v, scale, _seq_major(q))
    if out is not None:
        out.copy_(o)
        return out
    return o


def divided_attention_qkv(qkv: torch.Tensor, heads: int, group: tuple, seq: tuple,
                          prefix_k: Optional[torch.Tensor] = None, prefix_v: Optional[torch.Tensor] = None, *,
                          scale: Optional[float] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`divided_attention` on a whole fused projection output ``qkv`` (b, M, 3 * heads * d), rows
    q | k | v, head h = slice h*d inside each (the official layout), grouped by ``group``/``seq`` as in
    :func:`token_view`. Same result; its gradient w.r.t. ``qkv`` is written by the kernels in one buffer."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3 or qkv.shape[-1] % (3 * heads):
        raise ValueError(f"qkv must be (b, M, 3 * heads * d) with heads={heads}, got "
                         f"{tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__}")
    q, k, v = _qkv_views(qkv, heads, group, seq)
    problems = check_arguments(q, k, v, prefix_k, prefix_v, out)
    if problems:
        raise ValueError("divided_attention_qkv: " + "; ".join(problems))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if out is not None and not _needs_grad(qkv, prefix_k, prefix_v, out):
        _write_out(q, k, v, prefix_k, prefix_v, out, scale)
        return out
    o, _ = _op_qkv_forward(qkv, prefix_k, prefix_v, heads, [int(x) for x in group], [int(x) for x in seq], scale)
    if out is not None:
        out.copy_(o)
        return out
    return o


def fused_qkv_source(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """The contiguous (b, M, 3 * h * d) projection output that q, k, v (b, M, h, d) are the three slices
    of, or None. Lets a caller hand the whole buffer to :func:`divided_attention_qkv`."""
    base = q._base  # the tensor q, k, v are views of (for nn.Linear: the (b*M, 3*h*d) matmul result)
    if base is None or k._base is not base or v._base is not base or not base.is_contiguous():
        return None
    if not base.requires_grad or any(t.grad_fn is None for t in (q, k, v)):  # grads must flow through base
        return None
    b, m, h, d = q.shape
    if base.numel() != b * m * 3 * h * d or k.shape != q.shape or v.shape != q.shape:
        return None
    want = (m * 3 * h * d, 3 * h * d, d, 1)
    off = base.storage_offset()
    if any(tuple(t.stride()) != want for t in (q, k, v)):
        return None
    if (q.storage_offset(), k.storage_offset(), v.storage_offset()) != (off, off + h * d, off + 2 * h * d):
        return None
    return base.view(b, m, 3 * h * d)


def attention_4d(q, k, v, prefix_k=None, prefix_v=None, *, scale=None):
    """The backend-registry contract on the fused kernel: q (B, heads, Sq, d), k/v (B, heads, Sk, d) with
    B = batch * groups (batch-major), prefix (batch, heads, P, d). Returns (B, heads, Sq, d) (a view of a
    (batch, groups, Sq, heads, d) buffer). All inputs are used as the strided views they are."""
    if prefix_k is None:  # no prefix: every B row is its own group of one batch item (no grid-size limit)
        five = lambda t: t.unsqueeze(0).transpose(2, 3)  # noqa: E731
    else:
        batch = prefix_k.shape[0]
        if q.shape[0] % batch:
            raise ValueError(f"q batch {q.shape[0]} is not a multiple of the prefix batch {batch}")
        five = lambda t: t.unflatten(0, (batch, t.shape[0] // batch)).transpose(2, 3)  # noqa: E731
    pk = None if prefix_k is None else prefix_k.transpose(1, 2)
    pv = None if prefix_v is None else prefix_v.transpose(1, 2)
    y = divided_attention(five(q), five(k), five(v), pk, pv, scale=scale)
    return y.transpose(2, 3).flatten(0, 1)


def token_view(t: torch.Tensor, group: tuple, seq: tuple) -> torch.Tensor:
    """(b, M, heads, d) token layout -> (b, groups, seq, heads, d) *view* for one group axis and one seq axis.

    ``group`` and ``seq`` are (size, stride in tokens) with sizes multiplying to M and the smaller stride
    1 (e.g. time: group (n, 1), seq (f, n); space: group (f, n), seq (n, 1)). Raises ValueError otherwise.
    """
    (gs, gst), (ss, sst) = group, seq
    b, m, h, d = t.shape
    if gs * ss != m:
        raise ValueError(f"group {group} x seq {seq} cover {gs * ss} tokens, the tensor has {m}")
    if gs == 1:
        return t.unsqueeze(1)
    if ss == 1:
        return t.unsqueeze(2)
    if sst == 1 and gst == ss:  # group-major (space)
        return t.unflatten(1, (gs, ss))
    if gst == 1 and sst == gs:  # seq-major (time)
        return t.unflatten(1, (ss, gs)).transpose(1, 2)
    raise ValueError(f"group {group} and seq {seq} do not tile the token axis as one stride-1 axis and one "
                     "outer axis")
