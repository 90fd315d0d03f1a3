"""What some families ask of attention, in the kernels: a sliding window (Mistral, Gemma's local
layers: a token sees only the keys less than ``window`` positions back), attention sinks (gpt-oss)
and a soft-cap on the scores (Gemma 2). Decode and extend, Triton (interpreted on a CPU) and the
CPU path, against the float64 reference: windows shorter than, about and longer than the
sequences; pages out of every window are not read; sinks and soft-caps alone and together."""

import pytest
import torch
from kernel_cases import make_paged, rel_err, stored_copy
from test_kv_formats import ATTEND, EXACT, WRITE

from radixrt.kernels import reference

PAGE_SIZE, KV_HEADS, GROUP, DIM = 4, 2, 2, 32
WINDOWS = (1, 3, 6, 9, 64)


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("pool", [None, torch.int8])
def test_decode(impl, window, pool, gen):
    lens = [13, 6, 1, 22]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, DIM, torch.float32)
    stored = kv if pool is None else stored_copy(kv, pool, WRITE[impl])
    q = torch.randn(len(lens), KV_HEADS * GROUP, DIM, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, stored, seq_lens, window=window)
    k = reference.dequantize_pool(stored.k, stored.k_scale)
    v = reference.dequantize_pool(stored.v, stored.v_scale)
    exact = reference.decode_attention(q, k, v, kv.indptr, kv.indices, seq_lens, window=window)
    assert rel_err(out, exact) < EXACT[torch.float32]


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("window", WINDOWS)
def test_extend(impl, window, gen):
    """Prefixes ending mid-page, none, a lone token after a prefix, and a run of new tokens
    longer than the window."""
    prefix_lens, new_lens = [11, 0, 5, 7], [4, 3, 1, 19]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], PAGE_SIZE, KV_HEADS, DIM, torch.float32)
    total = sum(new_lens)
    q = torch.randn(total, KV_HEADS * GROUP, DIM, generator=gen)
    k_new = torch.randn(total, KV_HEADS, DIM, generator=gen)
    v_new = torch.randn(total, KV_HEADS, DIM, generator=gen)
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, kv, qo_indptr, prefix, window=window)
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(q, k_new, v_new, kv.k, kv.v, *table, window=window)
    assert rel_err(out, exact) < EXACT[torch.float32]


@pytest.mark.parametrize("impl", ATTEND)
def test_pages_out_of_reach_are_not_read(impl, gen):
    """Pages wholly behind every window hold NaN: decode and extend outputs stay finite and exact."""
    lens = [24]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, DIM, torch.float32)
    exact_kv = kv.k.clone(), kv.v.clone()
    for pool in (kv.k, kv.v):
        pool[kv.indices[:3].long()] = float("nan")  # tokens 0..11; a window of 8 from 16 on reaches 9
    q = torch.randn(1, KV_HEADS * GROUP, DIM, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, kv, seq_lens, window=8)
    exact = reference.decode_attention(q, *exact_kv, kv.indptr, kv.indices, seq_lens, window=8)
    assert rel_err(out, exact) < EXACT[torch.float32]
    new = [torch.randn(8, KV_HEADS, DIM, generator=gen) for _ in range(2)]
    qs = torch.randn(8, KV_HEADS * GROUP, DIM, generator=gen)
    indptr, prefix = torch.tensor([0, 8], dtype=torch.int32), torch.tensor([16], dtype=torch.int32)
    out = ATTEND[impl][1](qs, *new, kv, indptr, prefix, window=4)
    exact = reference.extend_attention(qs, *new, *exact_kv, indptr, kv.indptr, kv.indices, prefix, window=4)
    assert rel_err(out, exact) < EXACT[torch.float32]


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize(("with_sinks", "softcap"), [(True, 0.0), (False, 2.0), (True, 2.0)])
def test_sinks_and_softcap(impl, window, with_sinks, softcap, gen):
    """gpt-oss's sinks, a logit per query head that joins the softmax with no value, and Gemma 2's
    soft-cap (2.0: most scores here are bent), in decode (several splits merged) and extend
    (prefixes, none, a lone token), with and without a window."""
    sinks = torch.randn(KV_HEADS * GROUP, generator=gen) * 2 if with_sinks else None
    options = dict(window=window, sinks=sinks, softcap=softcap)
    lens = [13, 40, 1]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, DIM, torch.float32)
    q = torch.randn(len(lens), KV_HEADS * GROUP, DIM, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    q = q * 3  # scores of a few units: the cap bends them
    out = ATTEND[impl][0](q, kv, seq_lens, num_splits=3, **options)
    exact = reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens, **options)
    assert rel_err(out, exact) < EXACT[torch.float32]
    prefix_lens, new_lens = [9, 30, 0], [5, 1, 4]  # within each sequence's pages
    total = sum(new_lens)
    qs = torch.randn(total, KV_HEADS * GROUP, DIM, generator=gen)
    new = [torch.randn(total, KV_HEADS, DIM, generator=gen) for _ in range(2)]
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    qs = qs * 3
    out = ATTEND[impl][1](qs, *new, kv, qo_indptr, prefix, **options)
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(qs, *new, kv.k, kv.v, *table, **options)
    assert rel_err(out, exact) < EXACT[torch.float32]
