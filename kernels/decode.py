"""Decode attention in Triton: one query token per sequence over its paged KV (flash-decoding).

Stage 1 splits each sequence's tokens into ``num_splits`` chunks; program (sequence, KV head and
block of its query heads, split) runs an online softmax over its chunk for those query heads at
once (GQA: each K/V tile is loaded once for the whole block, padded to 16 rows for ``tl.dot``;
:func:`heads_per_program`) and writes a partial output with its log-sum-exp. Stage 2 merges the
partials of each (sequence, head).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixrt.kernels.layout import PagedKV, v_row_dim
from radixrt.kernels.tiles import attend_tile, head_blocks, key_block, load_paged_tile

MAX_SPLITS = 32
MIN_TOKENS_PER_SPLIT = 256


@triton.jit
def _decode_partial(
    Q,
    K,
    V,
    KV_INDPTR,
    KV_INDICES,
    SEQ_LENS,
    K_SCALE,
    V_SCALE,
    PART_O,
    PART_LSE,
    stride_qb,
    stride_qh,
    sm_scale,
    num_splits,
    window,
    softcap,
    Q_HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    K_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    V_ROW: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    KV_FORMAT: tl.constexpr,
    IEEE: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1) // tl.cdiv(GROUP, BLOCK_H)
    head_block = tl.program_id(1) % tl.cdiv(GROUP, BLOCK_H)
    split = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    lo = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)  # a sliding window's first token
    chunk = tl.cdiv(seq_len - lo, num_splits)
    start = lo + split * chunk
    end = tl.minimum(start + chunk, seq_len)

    rows = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < GROUP
    heads = kv_head * GROUP + rows
    dk = tl.arange(0, BLOCK_DK)
    q_mask = row_ok[:, None] & (dk < K_DIM)[None, :]
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + dk[None, :], mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
    first_page = tl.load(KV_INDPTR + b)
    for n0 in range(start, end, BLOCK_N):
        t = n0 + tl.arange(0, BLOCK_N)
        t_ok = t < end
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
        m_i, l_i, acc = attend_tile(q, k, v, t_ok[None, :], m_i, l_i, acc, sm_scale, softcap, IEEE, SOFTCAP)

    has_tokens = l_i > 0
    out = acc / tl.where(has_tokens, l_i, 1.0)[:, None]
    lse = tl.where(has_tokens, m_i + tl.log(tl.where(has_tokens, l_i, 1.0)), float("-inf"))
    part = (b * Q_HEADS + heads) * num_splits + split
    dv = tl.arange(0, BLOCK_DV)
    tl.store(PART_O + part[:, None] * V_DIM + dv[None, :], out, mask=row_ok[:, None] & (dv < V_DIM)[None, :])
    tl.store(PART_LSE + part, lse, mask=row_ok)


@triton.jit
def _decode_merge(
    PART_O,
    PART_LSE,
    SINKS,
    O,
    stride_ob,
    stride_oh,
    num_splits,
    Q_HEADS: tl.constexpr,
    V_DIM: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_SINKS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, BLOCK_DV)
    d_ok = d < V_DIM
    part = (b * Q_HEADS + h) * num_splits + s
    lse = tl.load(PART_LSE + part, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    if HAS_SINKS:  # a sink: one more logit in the softmax, with no value (gpt-oss)
        sink = tl.load(SINKS + h).to(tl.float32)
        top = tl.maximum(top, sink)
        extra = tl.exp(sink - top)
    else:
        extra = 0.0
    weight = tl.exp(lse - top)
    weight = weight / (tl.sum(weight, 0) + extra)
    o = tl.load(PART_O + part[:, None] * V_DIM + d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(o * weight[:, None], 0)
    tl.store(O + b * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty), mask=d_ok)


def heads_per_program(group: int, k_dim: int, v_dim: int) -> int:
    """Query heads one program attends for its KV head, padded to 16 for ``tl.dot``: the whole
    group (each K/V tile loaded once for all of it) up to 64 heads, and 16 when the heads are wide
    (MLA's 576/512: DeepSeek-V3's 128 heads on one latent would need 300 KB of shared memory in one
    program; in blocks of 16 the latent is read 8 times, from L2 after the first)."""
    cap = 16 if max(head_blocks(k_dim, v_dim).values()) > 256 else 64
    return min(max(16, triton.next_power_of_2(group)), cap)


def choose_num_splits(batch: int, kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """Enough (sequence, KV head, split) programs to fill the GPU about twice over, but no split
    shorter than ``MIN_TOKENS_PER_SPLIT`` tokens: a small batch with long contexts gets many
    splits, a large batch gets one."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    wanted = triton.cdiv(2 * sms, batch * kv_heads)
    return max(1, min(wanted, triton.cdiv(max_seq_len, MIN_TOKENS_PER_SPLIT), MAX_SPLITS))


def decode_attention(
    q: torch.Tensor,
    kv: PagedKV,
    seq_lens: torch.Tensor,
    *,
    sm_scale: float | None = None,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """``q [batch, q_heads, k_dim]`` -> ``[batch, q_heads, v_dim]``; sequence b attends to its
    first ``seq_lens[b]`` (>= 1) tokens in ``kv`` (with a sliding ``window``, to the last
    ``window`` of them: the pages before are not read). ``sinks [q_heads]`` (float32): a logit per
    query head that joins the softmax with no value (gpt-oss's attention sinks). ``softcap`` (not
    0): scores become ``softcap * tanh(score / softcap)`` (Gemma 2). ``max_seq_len``
    saves a device sync. Passing ``num_splits`` (``max_seq_len`` is not needed then) makes the call
    CUDA-graph capturable: no device-to-host sync, every shape known from the arguments' shapes."""
    batch, q_heads, k_dim = q.shape
    kv.check(q, batch)
    v_dim = kv.v_dim
    sm_scale = k_dim**-0.5 if sm_scale is None else sm_scale
    if num_splits is None:
        max_seq_len = int(seq_lens.max()) if max_seq_len is None else max_seq_len
        num_splits = choose_num_splits(batch, kv.kv_heads, min(max_seq_len, window or max_seq_len), q.device)
    part_o = torch.empty(batch, q_heads, num_splits, v_dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(batch, q_heads, num_splits, dtype=torch.float32, device=q.device)
    group = q_heads // kv.kv_heads
    blocks = head_blocks(k_dim, v_dim)
    k_scale, v_scale = kv.scales()
    block_h = heads_per_program(group, k_dim, v_dim)
    _decode_partial[(batch, kv.kv_heads * triton.cdiv(group, block_h), num_splits)](
        q,
        kv.k,
        kv.v,
        kv.indptr,
        kv.indices,
        seq_lens,
        k_scale,
        v_scale,
        part_o,
        part_lse,
        q.stride(0),
        q.stride(1),
        sm_scale,
        num_splits,
        window,
        float(softcap),
        Q_HEADS=q_heads,
        KV_HEADS=kv.kv_heads,
        GROUP=group,
        K_DIM=k_dim,
        V_DIM=v_dim,
        V_ROW=v_row_dim(kv.k, kv.v),
        **blocks,
        PAGE_SIZE=kv.page_size,
        BLOCK_N=key_block(q.element_size(), k_dim, v_dim),
        BLOCK_H=block_h,
        KV_FORMAT=kv.format,
        IEEE=q.dtype == torch.float32,
        SOFTCAP=bool(softcap),
        num_warps=4,
        num_stages=2,
    )
    out = q.new_empty(batch, q_heads, v_dim) if out is None else out
    _decode_merge[(batch, q_heads)](
        part_o,
        part_lse,
        part_lse if sinks is None else sinks,
        out,
        out.stride(0),
        out.stride(1),
        num_splits,
        Q_HEADS=q_heads,
        V_DIM=v_dim,
        BLOCK_DV=blocks["BLOCK_DV"],
        BLOCK_S=max(2, triton.next_power_of_2(num_splits)),
        HAS_SINKS=sinks is not None,
        num_warps=4,
    )
    return out
