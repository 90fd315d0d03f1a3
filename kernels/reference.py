"""The ground truth: paged attention and the KV write written plainly, one sequence at a time,
computed in float64. Tests compare the Triton kernels and the CPU path against these.

Shapes (see ``kernels/__init__.py`` for the page-table layout):
    q            [tokens or batch, q_heads, k_dim]; the output [..., v_dim]
    k/v pool     [num_pages, page_size, kv_heads, k_dim / v_dim] (dim // 2 bytes for int4)
    k/v scale    [num_pages, page_size, kv_heads] (int8, fp8), [..., 2 * dim // INT4_GROUP] (int4)
    kv_indptr    [batch + 1]  int32, sequence b's pages are kv_indices[kv_indptr[b]:kv_indptr[b+1]]
    kv_indices   [total pages] int32 physical page ids
"""

from __future__ import annotations

import math

import torch

from radixrt.kernels.layout import INT4_GROUP


def dequantize_pool(pool: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """A pool ``[num_pages, page_size, kv_heads, ...]`` as float64 ``[..., head_dim]``: float
    pools as they are, int8/fp8 times their scale per token and head, int4 unpacked (channel 2j
    in byte j's low nibble, 2j + 1 in its high one) times its group's scale plus its zero."""
    if pool.dtype == torch.uint8:
        values = torch.stack([pool & 15, pool >> 4], dim=-1).flatten(-2).double()
        groups = scale.shape[-1] // 2
        values = values.unflatten(-1, (groups, -1))
        return (values * scale[..., :groups, None].double() + scale[..., groups:, None].double()).flatten(-2)
    if scale is None:
        return pool.double()
    return pool.double() * scale.double()[..., None]


def gather_kv(pool: torch.Tensor, pages: torch.Tensor, length: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The first ``length`` tokens held in ``pages``, dequantised (see :func:`dequantize_pool`),
    as float64 ``[length, kv_heads, head_dim]``."""
    t = torch.arange(length)
    page, offset = pages.long()[t // pool.shape[1]], t % pool.shape[1]
    return dequantize_pool(pool[page, offset], None if scale is None else scale[page, offset])


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sm_scale: float,
    causal_from: int,
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Softmax attention of ``q [m, Hq, Dk]`` over ``k [n, Hkv, Dk]``, ``v [n, Hkv, Dv]``: query i
    (at position ``causal_from + i``) sees keys ``0 .. causal_from + i``, and with a sliding
    ``window`` only those less than ``window`` positions back. Query heads are grouped onto KV
    heads in order (GQA). ``sinks [Hq]``: one more logit per head in the softmax, with no value;
    ``softcap``: scores become ``softcap * tanh(score / softcap)``."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("mhd,nhd->hmn", q.double(), k) * sm_scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    m, n = q.shape[0], k.shape[0]
    distance = causal_from + torch.arange(m)[:, None] - torch.arange(n)[None, :]
    visible = (distance >= 0) & ((distance < window) if window else True)
    scores = scores.masked_fill(~visible, -math.inf)
    if sinks is not None:
        scores = torch.cat([scores, sinks.double()[:, None, None].expand(-1, m, 1)], dim=-1)
        return torch.einsum("hmn,nhd->mhd", torch.softmax(scores, dim=-1)[..., :-1], v)
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
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """One query token per sequence over its ``seq_lens[b]`` cached tokens (its last ``window``
    when given; K and V may differ in head dim; ``sm_scale`` defaults to K's ``** -0.5``)."""
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out = []
    for b in range(q.shape[0]):
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
        n = int(seq_lens[b])
        k = gather_kv(k_pool, pages, n, k_scale)
        v = gather_kv(v_pool, pages, n, v_scale)
        out.append(attention(q[b : b + 1], k, v, sm_scale, n - 1, window, sinks, softcap))
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
    window: int = 0,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
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
        out.append(attention(q[lo:hi], k, v, sm_scale, p, window, sinks, softcap))
    return torch.cat(out)


def quantize_token(value: torch.Tensor, pool_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token's ``[kv_heads, head_dim]`` as a pool of ``pool_dtype`` stores it, and its scales,
    quantised in float32 as the kernels do."""
    x = value.float()
    if pool_dtype == torch.int8:  # symmetric, one scale per head
        s = (x.abs().amax(-1) / 127.0).clamp_min(1e-8)
        return torch.round((x / s[:, None]).clamp(-127.0, 127.0)).to(pool_dtype), s
    if pool_dtype == torch.float8_e4m3fn:  # the same, saturating at e4m3's largest value
        s = (x.abs().amax(-1) / 448.0).clamp_min(1e-8)
        return (x / s[:, None]).clamp(-448.0, 448.0).to(pool_dtype), s
    if pool_dtype == torch.uint8:  # int4: per group of INT4_GROUP channels, float16 scale and zero
        groups = x.view(x.shape[0], -1, INT4_GROUP)
        lo, hi = groups.amin(-1), groups.amax(-1)
        s, z = ((hi - lo) / 15.0).clamp_min(2.0**-14).half(), lo.half()
        q = torch.round(((groups - z.float()[..., None]) / s.float()[..., None]).clamp(0.0, 15.0)).to(torch.uint8)
        q = q.view(x.shape[0], -1)
        return q[:, 0::2] | (q[:, 1::2] << 4), torch.cat([s, z], -1)
    return value.to(pool_dtype), None


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Token i's K/V goes to page ``slots[i] // page_size``, offset ``slots[i] % page_size``,
    quantised by :func:`quantize_token`, its scales at the same ``[page, offset]``."""
    page_size = k_pool.shape[1]
    for i, slot in enumerate(slots.tolist()):
        page, offset = divmod(slot, page_size)
        for pool, new, scale in ((k_pool, k_new, k_scale), (v_pool, v_new, v_scale)):
            value, s = quantize_token(new[i], pool.dtype)
            pool[page, offset] = value
            if s is not None:
                scale[page, offset] = s
