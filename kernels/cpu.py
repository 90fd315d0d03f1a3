"""The CPU path: the same operations as the Triton kernels, vectorised in PyTorch.

K/V are gathered head by head: one ``index_select`` of head_dim-sized rows lays them out as
``[kv_heads, tokens, head_dim]``, so that one batched matmul covers every head. Decode is cascade
attention over a padded batch (shared prefixes once, see :func:`plan_decode`); extend runs SDPA per
sequence with a causal mask shifted by the prefix length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from radixrt.kernels.layout import PagedKV, check_write
from radixrt.kernels.quant import dequantize, quantize


def head_rows(table: torch.Tensor, page_size: int, kv_heads: int) -> torch.Tensor:
    """Pages ``table [..., pages]`` -> ``[..., kv_heads, pages * page_size]``: the rows of a pool
    viewed as ``[-1, head_dim]`` that hold each token's K (or V) vector, head by head."""
    slots = (table[..., None] * page_size + torch.arange(page_size)).flatten(-2)
    return slots[..., None, :] * kv_heads + torch.arange(kv_heads)[:, None]


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


def gather(
    pool: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype, scratch: str | None = None
) -> torch.Tensor:
    """The vectors at ``rows [..., kv_heads, tokens]`` (from :func:`head_rows`) of ``pool`` ->
    ``[..., kv_heads, tokens, head_dim]`` in ``dtype``, dequantised: one ``index_select``, whose
    result is laid out head by head as the matmuls want it. With ``scratch``, the result lives in
    that named reusable buffer and is only valid until the next gather into it."""
    flat = pool.view(-1, pool.shape[-1])
    index = rows.flatten()
    out = SCRATCH.take(scratch, (index.numel(), flat.shape[1]), pool) if scratch else None
    vectors = torch.index_select(flat, 0, index, out=out) if out is not None else flat.index_select(0, index)
    if scale is not None:  # a pool row's scales sit at the same row of theirs
        per_row = scale.shape[3:]
        scale = scale.view(-1, *per_row).index_select(0, index).view(*rows.shape, *per_row)
    return dequantize(vectors.view(*rows.shape, flat.shape[1]), scale, dtype)


def values(kv: PagedKV, keys: torch.Tensor, read: Callable[[], torch.Tensor]) -> torch.Tensor:
    """V for keys just read: their first channels when V lives in K's rows (MLA), else ``read()``."""
    return keys[..., : kv.v_dim] if kv.v_in_k else read()


def _scales(kv: PagedKV) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (kv.k_scale, kv.v_scale) if kv.quantized else (None, None)


SHARED_TOKENS_WORTH_IT = 256
"""A shared prefix is attended once for all its sequences when that spares reading at least this
many tokens' K/V: each shared prefix costs a handful of extra small operations per layer."""


@dataclass(frozen=True)
class SharedPrefix:
    """Rows ``seqs`` of a plan start with the same physical pages: the pool's token slots
    ``slots = (start, end)`` when those pages are consecutive (read in place), else the pool rows
    ``rows`` (gathered)."""

    seqs: torch.Tensor  # [n] int64
    rows: torch.Tensor | None  # [kv_heads, tokens] int64
    slots: tuple[int, int] | None = None

    def read(self, pool: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype, scratch: str) -> torch.Tensor:
        """This prefix's K (or V of its own pool), ``[kv_heads, tokens, head_dim]``."""
        if self.slots is None:
            return gather(pool, self.rows, scale, dtype, scratch)
        lo, hi = self.slots
        if scale is not None:  # [kv_heads, tokens, ...] of these slots
            scale = scale.view(-1, *scale.shape[2:])[lo:hi].transpose(0, 1)
        return dequantize(pool.view(-1, *pool.shape[2:])[lo:hi].transpose(0, 1), scale, dtype)


@dataclass(frozen=True)
class PoolPlan:
    """How a batch of queries reads the pool, the same for every layer: each shared prefix once
    for all its sequences, then every sequence's own pages ``tail_rows`` (padded to the longest;
    ``tail_hidden`` masks the padding)."""

    shared: list[SharedPrefix]
    tail_rows: torch.Tensor  # [n, kv_heads, tokens] int64
    tail_hidden: torch.Tensor  # [n, 1, 1, tokens] bool


def plan_pool_reads(kv: PagedKV, seqs: list[int], lens: list[int]) -> PoolPlan:
    """Plan for sequences ``seqs`` of the page table reading their first ``lens`` tokens (each at
    least 1). Sequences are grouped by first page, and a group shares its longest common run of
    pages that stops before any member's last page (a decode token's own, being written)."""
    page_size, indptr, indices = kv.page_size, kv.indptr.tolist(), kv.indices.cpu().numpy().astype(np.int64)
    starts = [indptr[b] for b in seqs]
    by_first: dict[int, list[int]] = {}
    for i, start in enumerate(starts):
        by_first.setdefault(int(indices[start]), []).append(i)
    skip, shared = [0] * len(seqs), []
    for group in by_first.values():
        common = min((lens[i] - 1) // page_size for i in group)
        head = indices[starts[group[0]] : starts[group[0]] + common]
        for i in group[1:]:
            differ = np.flatnonzero(indices[starts[i] : starts[i] + common] != head[:common])
            common = int(differ[0]) if differ.size else common
        if common * page_size * (len(group) - 1) < SHARED_TOKENS_WORTH_IT:
            continue
        for i in group:
            skip[i] = common
        pages = head[:common]
        if (np.diff(pages) == 1).all():
            shared.append(
                SharedPrefix(torch.tensor(group), None, (int(pages[0]) * page_size, int(pages[-1] + 1) * page_size))
            )
        else:
            shared.append(SharedPrefix(torch.tensor(group), head_rows(torch.from_numpy(pages), page_size, kv.kv_heads)))
    counts = [-(-n // page_size) - s for n, s in zip(lens, skip)]
    table = np.zeros((len(seqs), max(counts)), dtype=np.int64)
    for i, (s, c) in enumerate(zip(skip, counts)):
        table[i, :c] = indices[starts[i] + s : starts[i] + s + c]
        table[i, c:] = table[i, 0]
    tail_lens = torch.tensor([n - s * page_size for n, s in zip(lens, skip)])
    hidden = torch.arange(table.shape[1] * page_size)[None, :] >= tail_lens[:, None]
    return PoolPlan(shared, head_rows(torch.from_numpy(table), page_size, kv.kv_heads), hidden[:, None, None, :])


class PlanCache:
    """The last plan, reused while the page table is the same tensors, unmodified, and the
    sequences and lengths are the same: the layers of one forward share them."""

    def __init__(self) -> None:
        self.key: tuple = ()
        self.tables: tuple[torch.Tensor, ...] = ()  # held so that their ids stay theirs
        self.plan: PoolPlan | None = None

    def get(self, kv: PagedKV, seqs: list[int], lens: list[int]) -> PoolPlan:
        key = (
            id(kv.indices),
            kv.indices._version,
            id(kv.indptr),
            kv.indptr._version,
            kv.page_size,
            kv.kv_heads,
            tuple(seqs),
            tuple(lens),
        )
        if self.plan is None or key != self.key:
            self.plan = plan_pool_reads(kv, seqs, lens)
            self.key, self.tables = key, (kv.indices, kv.indptr)
        return self.plan


PLANS = PlanCache()


def capped(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """``softcap * tanh(scores / softcap)`` in place (Gemma 2's attention); 0: as they are."""
    return scores.div_(softcap).tanh_().mul_(softcap) if softcap else scores


class Partial(NamedTuple):
    """Unnormalised attention over part of the keys, ``[..., rows, 1 | 1 | head_dim]``: the row
    maxima of the scores, the sums of ``exp(score - max)`` and the so weighted sums of values.
    Two parts over disjoint keys merge exactly into the part over both."""

    top: torch.Tensor
    total: torch.Tensor
    acc: torch.Tensor

    @staticmethod
    def of(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hidden: torch.Tensor | None,
        scale: float,
        softcap: float = 0.0,
    ) -> Partial:
        """``q [..., rows, dim]`` over ``k``/``v [..., tokens, dim]``, ``hidden`` tokens masked."""
        scores = capped(torch.matmul(q, k.transpose(-1, -2)).mul_(scale), softcap)
        if hidden is not None:
            scores.masked_fill_(hidden, float("-inf"))
        top = scores.amax(-1, keepdim=True)
        weights = scores.sub_(top).exp_()
        return Partial(top, weights.sum(-1, keepdim=True), torch.matmul(weights, v))

    def merge(self, other: Partial) -> Partial:
        top = torch.maximum(self.top, other.top)
        mine, theirs = (self.top - top).exp_(), (other.top - top).exp_()
        return Partial(top, self.total * mine + other.total * theirs, self.acc * mine + other.acc * theirs)

    def rows(self, index: torch.Tensor) -> Partial:
        return Partial(*(x[index] for x in self))

    def set_rows(self, index: torch.Tensor, value: Partial) -> None:
        for mine, new in zip(self, value):
            mine[index] = new

    def result(self) -> torch.Tensor:
        return self.acc / self.total


def attend_pool(
    q: torch.Tensor, kv: PagedKV, seqs: list[int], lens: list[int], scale: float, softcap: float = 0.0
) -> Partial:
    """Cascade attention of ``q [n, q_heads, head_dim]`` (one query per sequence ``seqs``) over the
    first ``lens`` tokens of each sequence in the pool: each shared prefix once for all the query
    heads of its sequences, then every sequence's own pages, gathered head by head with padding, in
    two batched matmuls. Returns the part ``[n, kv_heads, group, ...]``."""
    plan = PLANS.get(kv, seqs, lens)
    k_scale, v_scale = _scales(kv)
    qg = q.view(len(seqs), kv.kv_heads, q.shape[1] // kv.kv_heads, q.shape[2])
    k = gather(kv.k, plan.tail_rows, k_scale, q.dtype, scratch="k")  # [n, kv_heads, tokens, head_dim]
    v = values(kv, k, lambda: gather(kv.v, plan.tail_rows, v_scale, q.dtype, scratch="v"))
    part = Partial.of(qg, k, v, plan.tail_hidden, scale, softcap)
    for prefix in plan.shared:
        k = prefix.read(kv.k, k_scale, q.dtype, scratch="k")  # [kv_heads, tokens, head_dim]
        v = values(kv, k, lambda: prefix.read(kv.v, v_scale, q.dtype, scratch="v"))
        queries = qg[prefix.seqs].transpose(0, 1)  # [kv_heads, seqs, group, head_dim]
        shared = Partial.of(queries.flatten(1, 2), k, v, None, scale, softcap)
        shared = Partial(*(x.view(*queries.shape[:3], -1).transpose(0, 1) for x in shared))
        part.set_rows(prefix.seqs, part.rows(prefix.seqs).merge(shared))
    return part


def attend_span(
    q: torch.Tensor,
    kv: PagedKV,
    b: int,
    lo: int,
    hi: int,
    first: int,
    window: int,
    scale: float,
    k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Queries ``q [m, q_heads, k_dim]`` of sequence b at positions ``first ..`` over its pool
    tokens ``lo:hi`` followed by ``k_new``/``v_new`` (its new tokens, at ``hi ..``), causally and
    within ``window`` positions back (0: no window): SDPA, or, with sinks or a soft-cap (which
    SDPA has not), the same as a :class:`Partial`."""
    rows = head_rows(page_table_of(kv, b, hi), kv.page_size, kv.kv_heads)[:, lo:hi]
    k_scale, v_scale = _scales(kv)
    k = gather(kv.k, rows, k_scale, q.dtype)
    v = values(kv, k, lambda: gather(kv.v, rows, v_scale, q.dtype))
    if k_new is not None:
        k = torch.cat([k, k_new.transpose(0, 1).to(q.dtype)], dim=1)
        v = torch.cat([v, v_new.transpose(0, 1).to(q.dtype)], dim=1)
    distance = first + torch.arange(q.shape[0])[:, None] - (lo + torch.arange(k.shape[1]))[None, :]
    visible = (distance >= 0) & ((distance < window) if window else True)
    if sinks is not None or softcap:
        m, kv_heads = q.shape[0], kv.kv_heads
        qg = q.view(m, kv_heads, -1, q.shape[2]).permute(1, 2, 0, 3)  # [kv_heads, group, m, k_dim]
        part = with_sinks(Partial.of(qg, k[:, None], v[:, None], ~visible, scale, softcap), sinks, (kv_heads, -1, 1, 1))
        return part.result().permute(2, 0, 1, 3).reshape(m, q.shape[1], -1)
    causal = hi == 0 and not window and k_new is not None  # new tokens alone: SDPA's own causal mask
    mask = dict(is_causal=True) if causal else dict(attn_mask=visible)
    queries = q.transpose(0, 1).contiguous()  # SDPA is 3x slower on strided input
    attended = F.scaled_dot_product_attention(queries[None], k[None], v[None], scale=scale, enable_gqa=True, **mask)
    return attended[0].transpose(0, 1)


def attend_window(
    q: torch.Tensor, kv: PagedKV, seq_lens: torch.Tensor, window: int, scale: float, softcap: float = 0.0
) -> Partial:
    """One query per sequence over its last ``window`` tokens: each sequence's window gathered
    (padded to the longest), head by head, in one batched matmul."""
    width = min(window, int(seq_lens.max()))
    at = seq_lens.long()[:, None] - width + torch.arange(width)[None, :]  # [n, width] token positions
    hidden = at < 0
    at = at.clamp(min=0)
    pages = kv.indices.long()[kv.indptr[:-1, None].long() + at // kv.page_size]
    slots = pages * kv.page_size + at % kv.page_size
    rows = slots[:, None, :] * kv.kv_heads + torch.arange(kv.kv_heads)[:, None]  # [n, kv_heads, width]
    k_scale, v_scale = _scales(kv)
    k = gather(kv.k, rows, k_scale, q.dtype, scratch="k")
    v = values(kv, k, lambda: gather(kv.v, rows, v_scale, q.dtype, scratch="v"))
    qg = q.view(q.shape[0], kv.kv_heads, q.shape[1] // kv.kv_heads, q.shape[2])
    return Partial.of(qg, k, v, hidden[:, None, None, :], scale, softcap)


def page_table_of(kv: PagedKV, b: int, tokens: int) -> torch.Tensor:
    """Sequence b's pages holding its first ``tokens`` tokens."""
    start = int(kv.indptr[b])
    return kv.indices[start : start + -(-tokens // kv.page_size)].long()


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
    batch, q_heads, k_dim = q.shape
    kv.check(q, batch)
    scale = k_dim**-0.5 if sm_scale is None else sm_scale
    if window:
        part = attend_window(q, kv, seq_lens, window, scale, softcap)
    else:
        part = attend_pool(q, kv, list(range(batch)), seq_lens.tolist(), scale, softcap)
    result = with_sinks(part, sinks, (1, kv.kv_heads, -1, 1)).result().view(batch, q_heads, kv.v_dim)
    return result if out is None else out.copy_(result)


def with_sinks(part: Partial, sinks: torch.Tensor | None, heads: tuple[int, ...]) -> Partial:
    """``part`` with one more logit per query head in its softmax and no value (gpt-oss's attention
    sinks): a part of its own, merged exactly. ``heads``: the view of ``sinks [q_heads]`` that
    lines its heads up with the part's (``(1, kv_heads, -1, 1)`` for ``[n, kv_heads, group, 1]``)."""
    if sinks is None:
        return part
    top = sinks.to(part.top.dtype).view(heads).expand_as(part.top)
    return part.merge(Partial(top, torch.ones_like(part.total), torch.zeros_like(part.acc)))


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
    """Sequences with one new token after a prefix (decode tokens in a mixed batch) as in
    :func:`decode_attention`, merged with the token itself; the others one by one: the prefix
    gathered head by head, then SDPA with the causal mask shifted by the prefix length. With a
    sliding ``window``, every sequence goes one by one, reading only the prefix tokens in reach."""
    batch, (total, q_heads, k_dim) = prefix_lens.shape[0], q.shape
    kv.check(q, batch)
    v_dim = kv.v_dim
    out = q.new_empty(total, q_heads, v_dim) if out is None else out
    scale = k_dim**-0.5 if sm_scale is None else sm_scale
    bounds, prefixes = qo_indptr.tolist(), prefix_lens.tolist()
    single = [b for b in range(batch) if bounds[b + 1] - bounds[b] == 1 and prefixes[b] > 0 and not window]
    if single:
        at = torch.tensor([bounds[b] for b in single])
        queries = q[at]
        pool = attend_pool(queries, kv, single, [prefixes[b] for b in single], scale, softcap)
        qg = queries.view(*pool.acc.shape[:3], k_dim)  # [n, kv_heads, group, k_dim]
        k_own, v_own = k_new[at][:, :, None], v_new[at][:, :, None]  # [n, kv_heads, 1, k_dim | v_dim]
        own_scores = capped((qg * k_own).sum(-1, keepdim=True).mul_(scale), softcap)
        own = Partial(own_scores, torch.ones_like(pool.total), v_own.expand_as(pool.acc))
        out[at] = with_sinks(pool.merge(own), sinks, (1, kv.kv_heads, -1, 1)).result().view(len(single), q_heads, v_dim)
    done = set(single)
    for b in range(batch):
        lo, hi, p = bounds[b], bounds[b + 1], prefixes[b]
        if hi == lo or b in done:
            continue
        start = max(0, p + 1 - window) if window else 0
        new = k_new[lo:hi], v_new[lo:hi]
        out[lo:hi] = attend_span(q[lo:hi], kv, b, start, p, p, window, scale, *new, sinks, softcap)
    return out


def write_kv(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor | None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    check_write(k_pool, v_pool, slots, k_new, v_new, k_scale, v_scale)
    slots = slots.long()
    parts = [(k_pool, k_new, k_scale)] + ([(v_pool, v_new, v_scale)] if v_new is not None else [])
    for pool, new, scale in parts:
        stored, token_scales = quantize(new, pool.dtype)
        pool.view(-1, *pool.shape[2:])[slots] = stored
        if token_scales is not None:
            scale.view(-1, *scale.shape[2:])[slots] = token_scales
