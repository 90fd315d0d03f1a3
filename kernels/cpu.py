"""The CPU path: the same operations as the Triton kernels, vectorised in PyTorch.

K/V are gathered a page at a time (``index_select`` of page-sized rows). Decode runs two batched
matmuls per KV head over a padded batch with a length mask; extend runs SDPA per sequence with a
causal mask shifted by the prefix length.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from radixrt.kernels.layout import PagedKV, check_write


def page_table(kv: PagedKV, lens: torch.Tensor) -> torch.Tensor:
    """``[batch, max pages]`` page ids of sequences of ``lens`` tokens; rows are padded with a real
    page (masked out later), so every entry can be gathered."""
    counts = -(-lens.long() // kv.page_size)
    width = int(counts.max()) if counts.numel() else 0
    at = kv.indptr[:-1, None].long() + torch.arange(width, device=lens.device)[None, :]
    at = at.masked_fill(torch.arange(width, device=lens.device)[None, :] >= counts[:, None], 0)
    return kv.indices.long()[at] if kv.indices.numel() else at


class Scratch:
    """Gather buffers reused from call to call: a decode step gathers ~100 MB per layer, and fresh
    allocations that size cost page faults that take longer than the copy itself."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        key = (name, like.dtype, like.device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)


SCRATCH = Scratch()


def gather(pool: torch.Tensor, table: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype,
           scratch: str | None = None) -> torch.Tensor:
    """Whole pages ``table [batch, pages]`` of ``pool`` -> ``[batch, pages * page_size, kv_heads,
    head_dim]`` in ``dtype``, dequantised. One ``index_select`` of page-sized rows: an order of
    magnitude faster than gathering token slots. With ``scratch``, the result lives in that
    named reusable buffer and is only valid until the next gather into it."""
    num_pages, page_size, kv_heads, head_dim = pool.shape
    flat = pool.view(num_pages, -1)
    index = table.flatten()
    out = SCRATCH.take(scratch, (index.numel(), flat.shape[1]), pool) if scratch else None
    rows = torch.index_select(flat, 0, index, out=out) if out is not None else flat.index_select(0, index)
    rows = rows.view(*table.shape[:-1], table.shape[-1] * page_size, kv_heads, head_dim)
    if scale is None:
        return rows
    return (rows.float() * scale[:, None]).to(dtype)


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """``[tokens, heads, dim]`` -> contiguous ``[1, heads, tokens, dim]`` (SDPA is 3x slower on
    strided input)."""
    return x.transpose(0, 1).contiguous()[None]


def _scales(kv: PagedKV) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (kv.k_scale, kv.v_scale) if kv.quantized else (None, None)


def decode_attention(q: torch.Tensor, kv: PagedKV, seq_lens: torch.Tensor, *, sm_scale: float | None = None,
                     max_seq_len: int | None = None, num_splits: int | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Per KV head, two batched matmuls over the gathered pages, reading them in place (the
    query heads of a KV head are the rows of one product)."""
    batch, q_heads, head_dim = q.shape
    kv.check(q, batch)
    k_scale, v_scale = _scales(kv)
    table = page_table(kv, seq_lens)
    k = gather(kv.k, table, k_scale, q.dtype, scratch="k")  # [batch, tokens, kv_heads, head_dim]
    v = gather(kv.v, table, v_scale, q.dtype, scratch="v")
    hidden = torch.arange(k.shape[1], device=q.device)[None, None, :] >= seq_lens.long()[:, None, None]
    group = q_heads // kv.kv_heads
    qg = q.view(batch, kv.kv_heads, group, head_dim)
    out = torch.empty_like(q) if out is None else out
    og = out.view(batch, kv.kv_heads, group, head_dim)
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    for h in range(kv.kv_heads):
        scores = torch.bmm(qg[:, h], k[:, :, h].transpose(1, 2)).mul_(scale).masked_fill_(hidden, float("-inf"))
        og[:, h] = torch.bmm(torch.softmax(scores, -1), v[:, :, h])
    return out


def extend_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv: PagedKV, qo_indptr: torch.Tensor,
                     prefix_lens: torch.Tensor, *, sm_scale: float | None = None,
                     max_extend_len: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per sequence: its prefix pages gathered once, then SDPA with the causal mask shifted by
    the prefix length."""
    batch = prefix_lens.shape[0]
    kv.check(q, batch)
    out = torch.empty_like(q) if out is None else out
    k_scale, v_scale = _scales(kv)
    bounds, prefixes = qo_indptr.tolist(), prefix_lens.tolist()
    tables = page_table(kv, prefix_lens)
    for b in range(batch):
        lo, hi, p = bounds[b], bounds[b + 1], prefixes[b]
        if hi == lo:
            continue
        pages = tables[b : b + 1, : -(-p // kv.page_size)]
        k = heads_first(torch.cat([gather(kv.k, pages, k_scale, q.dtype)[0, :p], k_new[lo:hi]]))
        v = heads_first(torch.cat([gather(kv.v, pages, v_scale, q.dtype)[0, :p], v_new[lo:hi]]))
        if p == 0:
            causal = dict(is_causal=True)
        else:
            m = hi - lo
            causal = dict(attn_mask=torch.arange(p + m)[None, :] <= p + torch.arange(m)[:, None])
        attended = F.scaled_dot_product_attention(heads_first(q[lo:hi]), k, v, scale=sm_scale, enable_gqa=True, **causal)
        out[lo:hi] = attended[0].transpose(0, 1)
    return out


def write_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
             k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    quantized = check_write(k_pool, v_pool, slots, k_new, v_new, k_scale, v_scale)
    slots = slots.long()
    for pool, new, scale in ((k_pool, k_new, k_scale), (v_pool, v_new, v_scale)):
        if quantized:
            new = (new.float() / scale[:, None]).clamp(-448.0, 448.0)
        pool.view(-1, *pool.shape[2:])[slots] = new.to(pool.dtype)
