"""Triton building blocks shared by the decode and extend kernels: dequantising K/V rows as they
are loaded (``KV_FORMAT``, see :mod:`radixrt.kernels.layout`), and one online-softmax step."""

from __future__ import annotations

import triton
import triton.language as tl

from radixrt.kernels.layout import INT4_GROUP, KV_FLOAT, KV_INT4

FLOAT = tl.constexpr(KV_FLOAT)
INT4 = tl.constexpr(KV_INT4)
GROUP = tl.constexpr(INT4_GROUP)


@triton.jit
def load_rows(
    POOL,
    SCALES,
    row,
    ok,
    dtype: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROW_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KV_FORMAT: tl.constexpr,
):
    """The first ``HEAD_DIM`` channels of the vectors at pool rows ``row`` (``slot * kv_heads +
    head``; a stored row has ``ROW_DIM`` channels, more than ``HEAD_DIM`` for MLA's V read out of
    K's rows) as ``[len(row), BLOCK_D]`` in ``dtype``, dequantised in registers; rows not ``ok``
    and the channels past ``HEAD_DIM`` (``BLOCK_D`` is its next power of two, what ``tl.arange``
    needs) read 0."""
    if KV_FORMAT == INT4:
        j = tl.arange(0, BLOCK_D // 2)
        mask = ok[:, None] & (j < HEAD_DIM // 2)[None, :]
        packed = tl.load(POOL + row[:, None] * (ROW_DIM // 2) + j[None, :], mask=mask, other=0)
        at = SCALES + row[:, None] * (2 * ROW_DIM // GROUP) + j[None, :] // (GROUP // 2)
        scale = tl.load(at, mask=mask, other=0.0).to(tl.float32)
        zero = tl.load(at + ROW_DIM // GROUP, mask=mask, other=0.0).to(tl.float32)
        low = (packed & 15).to(tl.float32) * scale + zero
        high = (packed >> 4).to(tl.float32) * scale + zero
        return tl.interleave(low, high).to(dtype)
    d = tl.arange(0, BLOCK_D)
    mask = ok[:, None] & (d < HEAD_DIM)[None, :]
    x = tl.load(POOL + row[:, None] * ROW_DIM + d[None, :], mask=mask, other=0.0)
    if KV_FORMAT == FLOAT:
        return x.to(dtype)
    scale = tl.load(SCALES + row, mask=ok, other=0.0)
    return (x.to(tl.float32) * scale[:, None]).to(dtype)


@triton.jit
def load_paged_tile(
    K,
    V,
    KV_INDICES,
    first_page,
    t,
    t_ok,
    kv_head,
    K_SCALE,
    V_SCALE,
    dtype: tl.constexpr,
    KV_HEADS: tl.constexpr,
    K_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    V_ROW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    KV_FORMAT: tl.constexpr,
):
    """K ``[len(t), BLOCK_DK]`` and V ``[len(t), BLOCK_DV]`` of tokens ``t`` of a sequence whose pages start at
    ``KV_INDICES + first_page``, for one KV head, in ``dtype``; masked tokens and the padding channels read 0.
    ``V_ROW``: the channels of a stored V row (``K_DIM`` when V is the first channels of K's rows)."""
    page = tl.load(KV_INDICES + first_page + t // PAGE_SIZE, mask=t_ok, other=0)
    row = (page.to(tl.int64) * PAGE_SIZE + t % PAGE_SIZE) * KV_HEADS + kv_head
    k = load_rows(K, K_SCALE, row, t_ok, dtype, K_DIM, K_DIM, BLOCK_DK, KV_FORMAT)
    v = load_rows(V, V_SCALE, row, t_ok, dtype, V_DIM, V_ROW, BLOCK_DV, KV_FORMAT)
    return k, v


@triton.jit
def tanh(x):
    """tanh from one exp (the interpreter and every GPU have exp), exact in sign and saturation."""
    t = tl.exp(-2.0 * tl.abs(x))
    return tl.where(x >= 0, 1.0, -1.0) * (1.0 - t) / (1.0 + t)


@triton.jit
def attend_tile(q, k, v, keep, m_i, l_i, acc, sm_scale, softcap, IEEE: tl.constexpr, SOFTCAP: tl.constexpr):
    """One online-softmax step of ``q [M, DK]`` over ``k [N, DK]``, ``v [N, DV]`` into ``acc [M,
    DV]``, where ``keep [M, N]`` says which keys each query sees (padding channels of ``q`` and
    ``k`` are 0, so they add nothing to the scores, and those of ``v`` keep ``acc``'s 0).
    ``IEEE`` keeps float32 products exact (no TF32). ``SOFTCAP``: scores become ``softcap *
    tanh(score / softcap)`` (Gemma 2)."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * sm_scale
    if SOFTCAP:
        s = softcap * tanh(s / softcap)
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that sees nothing yet
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


def head_blocks(k_dim: int, v_dim: int) -> dict[str, int]:
    """``BLOCK_DK``/``BLOCK_DV``: the head dims padded to powers of two (``tl.arange``'s sizes; the
    channels past each dim are masked)."""
    return dict(BLOCK_DK=triton.next_power_of_2(k_dim), BLOCK_DV=triton.next_power_of_2(v_dim))


def key_block(element_size: int, k_dim: int, v_dim: int) -> int:
    """Keys per tile: 64 in a 16-bit compute dtype (``element_size`` 2), 32 in float32, fewer when a padded head dim
    passes 256 (DeepSeek MLA's 576/512 pad to 1024/512): the K/V tiles and the accumulator stay
    within the registers and shared memory, and 16 still feeds ``tl.dot``."""
    block = 64 if element_size < 4 else 32
    widest = max(head_blocks(k_dim, v_dim).values())
    return max(16, block * 256 // widest) if widest > 256 else block
