"""Triton building blocks shared by the decode and extend kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_paged_tile(
    K,
    V,
    KV_INDICES,
    first_page,
    t,
    t_ok,
    kv_head,
    d,
    K_SCALE,
    V_SCALE,
    dtype: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    QUANTIZED: tl.constexpr,
    PER_TOKEN: tl.constexpr,
):
    """K and V ``[len(t), HEAD_DIM]`` of tokens ``t`` of a sequence whose pages start at
    ``KV_INDICES + first_page``, for one KV head, dequantised to ``dtype``; masked tokens read 0.
    ``QUANTIZED``: scales per KV head (fp8); with ``PER_TOKEN`` too, one per token and KV head,
    laid out like the pool without its last dimension (int8)."""
    page = tl.load(KV_INDICES + first_page + t // PAGE_SIZE, mask=t_ok, other=0)
    slot = page.to(tl.int64) * PAGE_SIZE + t % PAGE_SIZE
    offs = (slot[:, None] * KV_HEADS + kv_head) * HEAD_DIM + d[None, :]
    k = tl.load(K + offs, mask=t_ok[:, None], other=0.0)
    v = tl.load(V + offs, mask=t_ok[:, None], other=0.0)
    if PER_TOKEN:
        k_scale = tl.load(K_SCALE + slot * KV_HEADS + kv_head, mask=t_ok, other=0.0)
        v_scale = tl.load(V_SCALE + slot * KV_HEADS + kv_head, mask=t_ok, other=0.0)
        k = (k.to(tl.float32) * k_scale[:, None]).to(dtype)
        v = (v.to(tl.float32) * v_scale[:, None]).to(dtype)
    elif QUANTIZED:
        k = (k.to(tl.float32) * tl.load(K_SCALE + kv_head)).to(dtype)
        v = (v.to(tl.float32) * tl.load(V_SCALE + kv_head)).to(dtype)
    return k, v


@triton.jit
def attend_tile(q, k, v, keep, m_i, l_i, acc, sm_scale, IEEE: tl.constexpr):
    """One online-softmax step of ``q [M, D]`` over ``k, v [N, D]`` where ``keep [M, N]`` says
    which keys each query sees. ``IEEE`` keeps float32 products exact (no TF32)."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = tl.where(keep, s * sm_scale, float("-inf"))
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
