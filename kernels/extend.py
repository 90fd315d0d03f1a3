"""Extend attention in Triton: the new tokens of a ragged batch (what a request computes after a
radix-cache hit) attend to their sequence's cached prefix through its pages and causally to each
other, with one online softmax across both.

Program (sequence, query head, block of new tokens) first streams the prefix from the paged pool,
then the sequence's new K/V from the contiguous ``k_new``/``v_new`` (no padding between
sequences), masking keys after each query.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixrt.kernels.layout import PagedKV, v_row_dim
from radixrt.kernels.tiles import attend_tile, head_blocks, key_block, load_paged_tile


@triton.jit
def _extend(
    Q,
    K_NEW,
    V_NEW,
    K,
    V,
    QO_INDPTR,
    KV_INDPTR,
    KV_INDICES,
    PREFIX_LENS,
    K_SCALE,
    V_SCALE,
    SINKS,
    O,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    sm_scale,
    window,
    softcap,
    KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    K_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    V_ROW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KV_FORMAT: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_SINKS: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_block = tl.program_id(2)
    q_start = tl.load(QO_INDPTR + b)
    q_len = tl.load(QO_INDPTR + b + 1) - q_start
    if m_block * BLOCK_M >= q_len:
        return
    kv_head = h // GROUP
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    dk = tl.arange(0, BLOCK_DK)
    dk_ok = dk < K_DIM
    dv = tl.arange(0, BLOCK_DV)
    dv_ok = dv < V_DIM
    q = tl.load(
        Q + (q_start + rows)[:, None] * stride_qt + h * stride_qh + dk[None, :],
        mask=row_ok[:, None] & dk_ok[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    prefix_len = tl.load(PREFIX_LENS + b)
    first_page = tl.load(KV_INDPTR + b)
    # a sliding window: row r (at position prefix_len + r) sees keys less than `window` back, so
    # this block's first row needs none before `reach`, and no tile before it is loaded
    reach = tl.where(window > 0, tl.maximum(prefix_len + m_block * BLOCK_M - window + 1, 0), 0)
    for n0 in range(reach, prefix_len, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_ok = t < prefix_len
        k, v = load_paged_tile(
            K,
            V,
            KV_INDICES,
            first_page,
            t,
            t_ok,
            kv_head,
            K_SCALE,
            V_SCALE,
            q.dtype,
            KV_HEADS,
            K_DIM,
            V_DIM,
            V_ROW,
            BLOCK_DK,
            BLOCK_DV,
            PAGE_SIZE,
            KV_FORMAT,
        )
        distance = (prefix_len + rows)[:, None] - t[None, :]
        keep = t_ok[None, :] & ((window <= 0) | (distance < window))
        m_i, l_i, acc = attend_tile(q, k, v, keep, m_i, l_i, acc, sm_scale, softcap, IEEE, SOFTCAP)

    last = tl.minimum((m_block + 1) * BLOCK_M, q_len)
    for n0 in range(tl.maximum(reach - prefix_len, 0), last, BLOCK_N):
        j = n0 + tl.arange(0, BLOCK_N)
        j_ok = j < q_len
        new = q_start + j
        k_mask, v_mask = j_ok[:, None] & dk_ok[None, :], j_ok[:, None] & dv_ok[None, :]
        k = tl.load(K_NEW + new[:, None] * stride_kt + kv_head * stride_kh + dk[None, :], mask=k_mask, other=0.0)
        v = tl.load(V_NEW + new[:, None] * stride_vt + kv_head * stride_vh + dv[None, :], mask=v_mask, other=0.0)
        k, v = k.to(q.dtype), v.to(q.dtype)
        keep = j_ok[None, :] & (j[None, :] <= rows[:, None])
        keep = keep & ((window <= 0) | (rows[:, None] - j[None, :] < window))
        m_i, l_i, acc = attend_tile(q, k, v, keep, m_i, l_i, acc, sm_scale, softcap, IEEE, SOFTCAP)

    if HAS_SINKS:  # a sink: one more logit in the softmax, with no value (gpt-oss)
        sink = tl.load(SINKS + h).to(tl.float32)
        m_new = tl.maximum(m_i, sink)
        alpha = tl.exp(m_i - m_new)
        acc = acc * alpha[:, None]
        l_i = l_i * alpha + tl.exp(sink - m_new)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # padding rows past a window may see no key
    tl.store(
        O + (q_start + rows)[:, None] * stride_ot + h * stride_oh + dv[None, :],
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None] & dv_ok[None, :],
    )


def extend_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    kv: PagedKV,
    qo_indptr: torch.Tensor,
    prefix_lens: torch.Tensor,
    *,
    sm_scale: float | None = None,
    max_extend_len: int | None = None,
    out: torch.Tensor | None = None,
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """``q [new tokens, q_heads, k_dim]``, ``k_new [new tokens, kv_heads, k_dim]`` and ``v_new
    [..., v_dim]`` in the same ragged layout (sequence b's are rows ``qo_indptr[b]:qo_indptr[b+1]``); the first
    ``prefix_lens[b]`` tokens of sequence b are read through ``kv``. ``max_extend_len`` saves a
    device sync. With a sliding ``window``, a token sees only keys less than ``window`` positions
    back, and tiles wholly out of reach are not loaded. ``sinks [q_heads]`` and ``softcap``: as in decode. Returns
    ``[new tokens, q_heads, v_dim]``."""
    total, q_heads, k_dim = q.shape
    batch = prefix_lens.shape[0]
    kv.check(q, batch)
    v_dim = kv.v_dim
    if k_new.shape != (total, kv.kv_heads, k_dim) or v_new.shape != (total, kv.kv_heads, v_dim):
        raise ValueError(
            f"k_new and v_new must be [{total}, {kv.kv_heads}, {k_dim}] and [{total}, {kv.kv_heads}, {v_dim}], "
            f"got {tuple(k_new.shape)} and {tuple(v_new.shape)}"
        )
    if qo_indptr.shape != (batch + 1,):
        raise ValueError(f"qo_indptr must have batch + 1 = {batch + 1} entries, got {tuple(qo_indptr.shape)}")
    sm_scale = k_dim**-0.5 if sm_scale is None else sm_scale
    if max_extend_len is None:
        max_extend_len = int((qo_indptr[1:] - qo_indptr[:-1]).max()) if batch else 0
    out = q.new_empty(total, q_heads, v_dim) if out is None else out
    if total == 0:
        return out
    block_n = key_block(q.element_size(), k_dim, v_dim)
    block_m = block_n
    k_scale, v_scale = kv.scales()
    _extend[(batch, q_heads, triton.cdiv(max_extend_len, block_m))](
        q,
        k_new,
        v_new,
        kv.k,
        kv.v,
        qo_indptr,
        kv.indptr,
        kv.indices,
        prefix_lens,
        k_scale,
        v_scale,
        k_scale if sinks is None else sinks,
        out,
        q.stride(0),
        q.stride(1),
        k_new.stride(0),
        k_new.stride(1),
        v_new.stride(0),
        v_new.stride(1),
        out.stride(0),
        out.stride(1),
        sm_scale,
        window,
        float(softcap),
        KV_HEADS=kv.kv_heads,
        GROUP=q_heads // kv.kv_heads,
        K_DIM=k_dim,
        V_DIM=v_dim,
        V_ROW=v_row_dim(kv.k, kv.v),
        **head_blocks(k_dim, v_dim),
        PAGE_SIZE=kv.page_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        KV_FORMAT=kv.format,
        IEEE=q.dtype == torch.float32,
        HAS_SINKS=sinks is not None,
        SOFTCAP=bool(softcap),
        num_warps=4,
        num_stages=2,
    )
    return out
