"""The int8 KV cache (symmetric, one float32 scale per token and KV head, stored beside the pages):
the write, Triton (interpreted on a CPU) and the CPU path, against the reference; decode and
extend over a pool so written, against the float64 reference on the dequantised pool (exact up to
float error) and on the unquantised pool (within what int8 costs)."""

import pytest
import torch
from kernel_cases import GPU, TOLERANCE, consecutive_pages, make_paged, on_device, rel_err, share_pages

from radixrt.kernels import cpu, reference
from radixrt.kernels import decode as triton_decode
from radixrt.kernels import extend as triton_extend
from radixrt.kernels import kv_write as triton_kv_write
from radixrt.kernels.layout import PagedKV

WRITE = {"triton": on_device(triton_kv_write.write_kv), "cpu": cpu.write_kv}
ATTEND = {
    "triton": (on_device(triton_decode.decode_attention), on_device(triton_extend.extend_attention)),
    "cpu": (cpu.decode_attention, cpu.extend_attention),
}
EXACT = {**TOLERANCE, torch.bfloat16: 2e-2}
"""Relative error allowed against the reference on the dequantised pool: the kernels round each
dequantised K/V row to the compute dtype, which in bfloat16 doubles the error of a bfloat16 pool."""
INT8 = {dtype: 2e-2 + tolerance for dtype, tolerance in TOLERANCE.items()}
"""Relative error allowed against the reference on the unquantised float32 pool: what int8 costs
(observed up to 9e-3 with float32 compute) plus the compute dtype's own error."""


def int8_pools(num_pages: int, page_size: int, kv_heads: int, head_dim: int):
    """Empty int8 pools and their scales; the scales start NaN so that reading a slot that was
    never written fails the comparison."""
    k, v = (torch.zeros(num_pages, page_size, kv_heads, head_dim, dtype=torch.int8) for _ in range(2))
    k_scale, v_scale = (torch.full((num_pages, page_size, kv_heads), float("nan")) for _ in range(2))
    return k, v, k_scale, v_scale


def quantized_copy(kv: PagedKV, impl: str) -> PagedKV:
    """``kv``'s tokens (every slot of every page in its page table) written by ``impl`` into an
    int8 pool: a shared page is written once and then read by all its sequences."""
    page_size = kv.page_size
    pages = kv.indices.long().unique()
    slots = (pages[:, None] * page_size + torch.arange(page_size)).flatten()
    k, v, k_scale, v_scale = int8_pools(kv.k.shape[0], page_size, kv.kv_heads, kv.head_dim)
    flat = kv.k.view(-1, kv.kv_heads, kv.head_dim), kv.v.view(-1, kv.kv_heads, kv.head_dim)
    WRITE[impl](k, v, slots.to(torch.int32), flat[0][slots], flat[1][slots], k_scale, v_scale)
    return PagedKV(k, v, kv.indptr, kv.indices, k_scale, v_scale)


def dequantized(kv: PagedKV) -> tuple[torch.Tensor, torch.Tensor]:
    return kv.k.double() * kv.k_scale.double()[..., None], kv.v.double() * kv.v_scale.double()[..., None]


@pytest.mark.parametrize("impl", WRITE)
@pytest.mark.parametrize(
    "page_size, kv_heads, head_dim, dtype",
    [(1, 2, 64, torch.float32), (16, 3, 128, torch.bfloat16), (64, 1, 64, torch.float16)],
)
def test_write_int8(impl, page_size, kv_heads, head_dim, dtype, gen):
    num_pages, tokens = 6, 2 * page_size + 3
    slots = torch.randperm(num_pages * page_size, generator=gen)[:tokens].to(torch.int32)
    k_new = (torch.randn(tokens, kv_heads, head_dim, generator=gen) * 3).to(dtype)
    v_new = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    k_new[0] = 0  # an all-zero vector still gets a usable scale
    k, v, k_scale, v_scale = int8_pools(num_pages, page_size, kv_heads, head_dim)
    k_scale.fill_(-1.0), v_scale.fill_(-1.0)
    k.fill_(7), v.fill_(-7)
    refs = [x.clone() for x in (k, v, k_scale, v_scale)]
    WRITE[impl](k, v, slots, k_new, v_new, k_scale, v_scale)
    reference.write_kv(refs[0], refs[1], slots, k_new, v_new, refs[2], refs[3])
    for out, ref in zip((k, v, k_scale, v_scale), refs):
        if GPU:  # the GPU divides in fewer correctly rounded steps: a value may round the other way
            assert (out.double() - ref.double()).abs().max() <= (1 if out.dtype == torch.int8 else 1e-6)
        else:
            assert torch.equal(out, ref)
    k_rows, k_scales = k.view(-1, kv_heads, head_dim)[slots.long()], k_scale.view(-1, kv_heads)[slots.long()]
    assert k_rows.abs().amax(-1)[1:].eq(127).all() and k_rows[0].eq(0).all() and k_scales[0].eq(1e-8).all()
    error = (k_rows.float() * k_scales[..., None] - k_new.float()).abs()
    assert (error <= k_scales[..., None] * 0.5001).all()  # round to nearest: half a step at most
    untouched = torch.ones(num_pages * page_size, dtype=torch.bool)
    untouched[slots.long()] = False
    assert k.view(-1, kv_heads, head_dim)[untouched].eq(7).all() and k_scale.view(-1, kv_heads)[untouched].eq(-1).all()


# (lens, page_size, kv_heads, group, head_dim, dtype): page sizes 1, 16 and 64, GQA, head dims 64
# and 128; make_paged scatters the pages (even ids in random order).
DECODE_CASES = {
    "page1_gqa4": ([37, 5], 1, 2, 4, 64, torch.float32),
    "page16_gqa4_dim128": ([70, 17], 16, 2, 4, 128, torch.bfloat16),
    "page64_dim128": ([130, 64], 64, 1, 2, 128, torch.float32),
    "page16_gqa8_fp16": ([40, 1], 16, 1, 8, 64, torch.float16),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode_int8(impl, case, gen):
    lens, page_size, kv_heads, group, head_dim, dtype = DECODE_CASES[case]
    kv = make_paged(gen, lens, page_size, kv_heads, head_dim, torch.float32)
    kv8 = quantized_copy(kv, impl)
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, kv8, seq_lens, out=torch.full_like(q, float("nan")))
    assert out.dtype == dtype and out.shape == q.shape
    table = kv.indptr, kv.indices, seq_lens
    exact = reference.decode_attention(q, *dequantized(kv8), *table)
    assert rel_err(out, exact) < EXACT[dtype]
    scaled = reference.decode_attention(q, kv8.k, kv8.v, *table, k_scale=kv8.k_scale, v_scale=kv8.v_scale)
    assert torch.allclose(scaled, exact, rtol=0, atol=1e-12)
    assert rel_err(out, reference.decode_attention(q, kv.k, kv.v, *table)) < INT8[dtype]


# (prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype)
EXTEND_CASES = {
    "page1": ([30, 0], [25, 3], 1, 2, 4, 64, torch.float32),
    "page16_dim128": ([33, 5], [20, 1], 16, 2, 4, 128, torch.bfloat16),
    "page64_decode_rows": ([65, 9, 64], [1, 1, 9], 64, 1, 8, 64, torch.float16),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("case", EXTEND_CASES)
def test_extend_int8(impl, case, gen):
    prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype = EXTEND_CASES[case]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], page_size, kv_heads, head_dim, torch.float32)
    kv8 = quantized_copy(kv, impl)
    total = sum(new_lens)
    q = torch.randn(total, kv_heads * group, head_dim, generator=gen).to(dtype)
    k_new, v_new = (torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype) for _ in range(2))
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, kv8, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    assert out.dtype == dtype and out.shape == q.shape
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(q, k_new, v_new, *dequantized(kv8), *table)
    assert rel_err(out, exact) < EXACT[dtype]
    unquantized = reference.extend_attention(q, k_new, v_new, kv.k, kv.v, *table)
    assert rel_err(out, unquantized) < INT8[dtype]


@pytest.mark.parametrize("consecutive", [False, True], ids=["scattered", "consecutive"])
@pytest.mark.parametrize("impl", ATTEND)
def test_shared_prefix_int8(impl, consecutive, gen, monkeypatch):
    """Two sequences on the same prefix pages (written once, with their scales) read the same
    values; the CPU path attends such a prefix once for both (forced here for small shapes)."""
    monkeypatch.setattr(cpu, "SHARED_TOKENS_WORTH_IT", 0)
    lens = [100, 90]
    kv = make_paged(gen, lens, 16, 2, 64, torch.float32)
    kv = share_pages(consecutive_pages(kv, 0, 5) if consecutive else kv, {1: (0, 5)})
    kv8 = quantized_copy(kv, impl)
    assert len(cpu.plan_pool_reads(kv8, [0, 1], lens).shared) == 1
    q = torch.randn(2, 8, 64, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    decode, extend = ATTEND[impl]
    table = kv.indptr, kv.indices, seq_lens
    out = decode(q, kv8, seq_lens, out=torch.full_like(q, float("nan")))
    assert rel_err(out, reference.decode_attention(q, *dequantized(kv8), *table)) < 1e-5
    assert rel_err(out, reference.decode_attention(q, kv.k, kv.v, *table)) < INT8[torch.float32]

    prefix = seq_lens - 1
    k_new, v_new = (torch.randn(2, 2, 64, generator=gen) for _ in range(2))
    qo_indptr = torch.arange(3, dtype=torch.int32)
    out = extend(q, k_new, v_new, kv8, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    ref = reference.extend_attention(q, k_new, v_new, *dequantized(kv8), qo_indptr, kv.indptr, kv.indices, prefix)
    assert rel_err(out, ref) < 1e-5


SCALES = (4, 16, 2)  # [num_pages, page_size, kv_heads] of the pools below
BAD_SCALES = {
    "missing": (None, "an int8 KV pool needs k_scale"),
    "per_head": (torch.ones(2), r"k_scale of an int8 KV pool must be \[4, 16, 2\], got \[2\]"),
    "wrong_shape": (torch.ones(4, 16, 3), r"k_scale of an int8 KV pool must be \[4, 16, 2\]"),
    "float16": (torch.ones(SCALES, dtype=torch.float16), "k_scale of an int8 KV pool must be float32"),
    "strided": (torch.ones(4, 16, 4)[..., ::2], "k_scale of an int8 KV pool must be contiguous"),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("bad", BAD_SCALES)
def test_bad_int8_scales_are_named(impl, bad):
    k_scale, message = BAD_SCALES[bad]
    k = torch.zeros(*SCALES, 64, dtype=torch.int8)
    v_scale = torch.ones(SCALES)
    kv = PagedKV(k, k.clone(), torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))
    kv = PagedKV(kv.k, kv.v, kv.indptr, kv.indices, k_scale, v_scale)
    q = torch.zeros(1, 4, 64)
    with pytest.raises(ValueError, match=message):
        ATTEND[impl][0](q, kv, torch.tensor([5], dtype=torch.int32))
    with pytest.raises(ValueError, match=message):
        WRITE[impl](k, k.clone(), torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64), k_scale, v_scale)
    with pytest.raises(ValueError, match="an int8 KV pool needs v_scale"):
        WRITE[impl](k, k.clone(), torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64), v_scale, None)


@pytest.mark.parametrize("impl", ATTEND)
def test_int8_k_with_another_v_is_named(impl):
    k = torch.zeros(*SCALES, 64, dtype=torch.int8)
    scales = torch.ones(SCALES), torch.ones(SCALES)
    with pytest.raises(ValueError, match="the K pool is int8 but the V pool is torch.float32"):
        WRITE[impl](k, k.float(), torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64), *scales)
    kv = PagedKV(k, k.float(), torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32), *scales)
    with pytest.raises(ValueError, match="the K pool is int8 but the V pool"):
        ATTEND[impl][0](torch.zeros(1, 4, 64), kv, torch.tensor([5], dtype=torch.int32))
