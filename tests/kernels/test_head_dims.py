"""Head dims that are not powers of two (80, 96, 112, 192; 64 as the control): the Triton kernels
pad the head dimension to its next power of two and mask the channels past it. Decode and extend,
Triton (interpreted on a CPU) and the CPU path, against the float64 reference, on float pools and
a few int8 and int4 ones; the write of every format, Triton against the CPU path, bit for bit."""

import pytest
import torch
from kernel_cases import TOLERANCE, empty_pools, make_paged, rel_err, stored_copy
from test_kv_formats import ATTEND, EXACT, WRITE, allowed, assert_same_write, dequantized, pool_dtype

from radixrt.kernels import reference
from radixrt.kernels.layout import INT4, check_head_dim, check_int4_head_dim

HEAD_DIMS = (64, 80, 96, 112, 192)
PAGE_SIZE, KV_HEADS, GROUP = 16, 2, 3  # GQA: 3 query heads a KV head (a group padded to 16 rows)


def run_decode(impl, head_dim, pool, gen):
    """Decode of two sequences over scattered pages, float32 compute; the output and the
    references on the pool as stored and as given."""
    lens = [37, 20]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, head_dim, torch.float32)
    stored = kv if pool is None else stored_copy(kv, pool, WRITE[impl])
    q = torch.randn(len(lens), KV_HEADS * GROUP, head_dim, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, stored, seq_lens, out=torch.full_like(q, float("nan")))
    table = kv.indptr, kv.indices, seq_lens
    exact = reference.decode_attention(q, *dequantized(stored), *table)
    return out, exact, reference.decode_attention(q, kv.k, kv.v, *table)


def run_extend(impl, head_dim, pool, gen):
    """Extend of two sequences (one with a cached prefix that ends mid-page, one without)."""
    prefix_lens, new_lens = [21, 0], [9, 5]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], PAGE_SIZE, KV_HEADS, head_dim, torch.float32)
    stored = kv if pool is None else stored_copy(kv, pool, WRITE[impl])
    total = sum(new_lens)
    q = torch.randn(total, KV_HEADS * GROUP, head_dim, generator=gen)
    k_new, v_new = (torch.randn(total, KV_HEADS, head_dim, generator=gen) for _ in range(2))
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, stored, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(q, k_new, v_new, *dequantized(stored), *table)
    return out, exact, reference.extend_attention(q, k_new, v_new, kv.k, kv.v, *table)


RUN = {"decode": run_decode, "extend": run_extend}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("kernel", RUN)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_float_pool(impl, kernel, head_dim, gen):
    out, exact, _ = RUN[kernel](impl, head_dim, None, gen)
    assert out.shape[-1] == head_dim
    assert rel_err(out, exact) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("kernel", RUN)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("head_dim", [80, 96])
def test_quantized_pool(impl, kernel, fmt, head_dim, gen):
    pool = pool_dtype(fmt, torch.float32)
    out, exact, unquantized = RUN[kernel](impl, head_dim, pool, gen)
    assert rel_err(out, exact) < EXACT[torch.float32]
    assert rel_err(out, unquantized) < allowed(pool, torch.float32)


@pytest.mark.parametrize("fmt", ["float", "int8", "fp8", "int4"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS[1:])
def test_write_matches_the_cpu_path(fmt, head_dim, gen):
    """The Triton write stores what the CPU path does, scales included: a padding channel enters
    no scale (int8/fp8: the max over the real channels; int4: padding groups stored nowhere)."""
    num_pages, tokens = 3, 19
    slots = torch.randperm(num_pages * PAGE_SIZE, generator=gen)[:tokens].to(torch.int32)
    k_new = torch.randn(tokens, KV_HEADS, head_dim, generator=gen) * 3 + 1
    v_new = torch.randn(tokens, KV_HEADS, head_dim, generator=gen).to(torch.bfloat16)
    pool = pool_dtype(fmt, torch.float32)
    pools = list(empty_pools(num_pages, PAGE_SIZE, KV_HEADS, head_dim, pool))
    refs = [None if x is None else x.clone() for x in pools]
    WRITE["triton"](pools[0], pools[1], slots, k_new, v_new, pools[2], pools[3])
    WRITE["cpu"](refs[0], refs[1], slots, k_new, v_new, refs[2], refs[3])
    for out, ref in zip(pools, refs):
        if out is not None:
            assert_same_write(out, ref)


@pytest.mark.parametrize("head_dim", [16, 24, 40, 64, 72, 80, 96, 112, 128, 160, 192, 248, 256, 264, 512])
def test_head_dims_run(head_dim):
    check_head_dim(head_dim)


@pytest.mark.parametrize("head_dim", [0, 8, 12, 20, 100, 127, 520, 576])
def test_other_head_dims_are_named(head_dim):
    """One dim is K's and V's: up to 512 (K alone may have 576, see ``test_kv_head_dims``)."""
    with pytest.raises(ValueError, match=f"head_dim must be a multiple of 8 from 16 to 512, got {head_dim}$"):
        check_head_dim(head_dim)


def test_int4_still_needs_whole_groups():
    check_int4_head_dim(80)
    with pytest.raises(ValueError, match="int4 KV pool needs head_dim a multiple of 16.*got head_dim 40"):
        check_int4_head_dim(40)
    with pytest.raises(ValueError, match="int4 KV pool needs head_dim a multiple of 16.*got head_dim 40"):
        empty_pools(1, PAGE_SIZE, KV_HEADS, 40, INT4)
