"""The ground truth: paged attention and the KV write written plainly, one sequence at a time,
computed in float64. Tests compare the Triton kernels and the CPU path against these.

Shapes (see ``kernels/__init__.py`` for the page-table layout):
    q            [tokens or batch, q_heads, head_dim]
    k/v pool     [num_pages, page_size, kv_heads, head_dim]
    kv_indptr    [batch + 1]  int32, sequence b's pages are kv_indices[kv_indptr[b]:kv_indptr[b+1]]
    kv_indices   [total pages] int32 physical page ids
"""

from __future__ import annotations

import math

import torch


def gather_kv(pool: torch.Tensor, pages: torch.Tensor, length: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The first ``length`` tokens held in ``pages``, as float64 ``[length, kv_heads, head_dim]``,
    times ``scale``: per KV head ``[kv_heads]`` (fp8) or per token and head ``[num_pages,
    page_size, kv_heads]`` (int8)."""
    page_size = pool.shape[1]
    rows = []
    for t in range(length):
        page, offset = int(pages[t // page_size]), t % page_size
        row = pool[page, offset].double()
        if scale is not None:
            row = row * (scale if scale.dim() == 1 else scale[page, offset]).double()[:, None]
        rows.append(row)
    return torch.stack(rows) if rows else pool.new_zeros((0, *pool.shape[2:]), dtype=torch.float64)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, causal_from: int | None
) -> torch.Tensor:
    """Softmax attention of ``q [m, Hq, D]`` over ``k, v [n, Hkv, D]``; with ``causal_from`` = p,
    query i sees keys ``0 .. p + i``. Query heads are grouped onto KV heads in order (GQA)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("mhd,nhd->hmn", q.double(), k) * sm_scale
    if causal_from is not None:
        m, n = q.shape[0], k.shape[0]
        visible = torch.arange(n)[None, :] <= causal_from + torch.arange(m)[:, None]
        scores = scores.masked_fill(~visible, -math.inf)
    return torch.einsum("hmn,nhd->mhd", torch.softmax(scores, dim=-1), v)


def decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per sequence over its ``seq_lens[b]`` cached tokens."""
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out = []
    for b in range(q.shape[0]):
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
        n = int(seq_lens[b])
        k = gather_kv(k_pool, pages, n, k_scale)
        v = gather_kv(v_pool, pages, n, v_scale)
        out.append(attention(q[b : b + 1], k, v, sm_scale, None))
    return torch.cat(out)


def extend_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    prefix_lens: torch.Tensor,
    sm_scale: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """New tokens ``q[qo_indptr[b]:qo_indptr[b+1]]`` of sequence b attend to its first
    ``prefix_lens[b]`` cached tokens (read through its pages) and causally to its new tokens
    (``k_new``/``v_new``, laid out like ``q``)."""
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out = []
    for b in range(len(prefix_lens)):
        lo, hi = int(qo_indptr[b]), int(qo_indptr[b + 1])
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
        p = int(prefix_lens[b])
        k = torch.cat([gather_kv(k_pool, pages, p, k_scale), k_new[lo:hi].double()])
        v = torch.cat([gather_kv(v_pool, pages, p, v_scale), v_new[lo:hi].double()])
        out.append(attention(q[lo:hi], k, v, sm_scale, p))
    return torch.cat(out)


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Token i's K/V goes to page ``slots[i] // page_size``, offset ``slots[i] % page_size``;
    an fp8 pool stores ``value / scale`` per KV head; an int8 pool stores ``round(value / s)``
    with ``s = max |value| / 127`` per KV head of the token, written to ``scale[page, offset]``."""
    page_size = k_pool.shape[1]
    for i, slot in enumerate(slots.tolist()):
        page, offset = divmod(slot, page_size)
        for pool, new, scale in ((k_pool, k_new, k_scale), (v_pool, v_new, v_scale)):
            value = new[i]
            if pool.dtype == torch.int8:  # in float32, symmetric, one scale per head
                s = (value.float().abs().amax(-1) / 127.0).clamp_min(1e-8)
                scale[page, offset] = s
                value = torch.round((value.float() / s[:, None]).clamp(-127.0, 127.0))
            elif scale is not None:  # quantise in float32, saturating at fp8 e4m3's largest value
                value = (value.float() / scale[:, None]).clamp(-448.0, 448.0)
            pool[page, offset] = value.to(pool.dtype)
