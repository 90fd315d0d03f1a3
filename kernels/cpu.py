"""The CPU path: the same operations as the Triton kernels, vectorised in PyTorch.

Decode gathers every sequence's K/V once per call into a padded batch and runs one batched
``scaled_dot_product_attention`` with a length mask; extend gathers each sequence's prefix once
and runs SDPA per sequence with a causal mask shifted by the prefix length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from radixrt.kernels.layout import PagedKV, check_write


def token_slots(kv: PagedKV, first: torch.Tensor, lens: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool slots ``[batch, max_len]`` of tokens ``0 .. lens[b]-1`` of each sequence, whose pages
    start at ``kv.indices[first[b]]``, and the mask of which positions are real."""
    pos = torch.arange(max_len, device=kv.k.device)
    valid = pos[None, :] < lens[:, None]
    page_at = (first[:, None] + pos[None, :] // kv.page_size).masked_fill(~valid, 0)
    pages = kv.indices.long()[page_at] if kv.indices.numel() else torch.zeros_like(page_at)
    return pages * kv.page_size + pos % kv.page_size, valid


def gather(pool: torch.Tensor, slots: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``pool`` rows at ``slots [...]`` -> ``[..., kv_heads, head_dim]`` in ``dtype``, dequantised."""
    rows = pool.view(-1, *pool.shape[2:])[slots]
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
    batch = q.shape[0]
    kv.check(q, batch)
    lens = seq_lens.long()
    max_len = int(lens.max()) if max_seq_len is None else max_seq_len
    slots, valid = token_slots(kv, kv.indptr[:-1].long(), lens, max_len)
    k_scale, v_scale = _scales(kv)
    k = gather(kv.k, slots, k_scale, q.dtype).transpose(1, 2).contiguous()  # [batch, kv_heads, len, dim]
    v = gather(kv.v, slots, v_scale, q.dtype).transpose(1, 2).contiguous()
    attended = F.scaled_dot_product_attention(q[:, :, None, :], k, v, attn_mask=valid[:, None, None, :], scale=sm_scale,
                                              enable_gqa=True)[:, :, 0, :]
    if out is None:
        return attended
    out.copy_(attended)
    return out


def extend_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv: PagedKV, qo_indptr: torch.Tensor,
                     prefix_lens: torch.Tensor, *, sm_scale: float | None = None,
                     max_extend_len: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    batch = prefix_lens.shape[0]
    kv.check(q, batch)
    out = torch.empty_like(q) if out is None else out
    k_scale, v_scale = _scales(kv)
    bounds, prefixes, firsts = qo_indptr.tolist(), prefix_lens.tolist(), kv.indptr.tolist()
    for b in range(batch):
        lo, hi, p = bounds[b], bounds[b + 1], prefixes[b]
        if hi == lo:
            continue
        slots, _ = token_slots(kv, torch.tensor([firsts[b]]), torch.tensor([p]), p)
        k = heads_first(torch.cat([gather(kv.k, slots[0], k_scale, q.dtype), k_new[lo:hi]]))
        v = heads_first(torch.cat([gather(kv.v, slots[0], v_scale, q.dtype), v_new[lo:hi]]))
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
