"""The KV formats (see ``radixrt.kernels.layout``): float pools of another dtype than the compute,
int8 and fp8 with a float32 scale per token and KV head, packed int4 with a float16 scale and zero
per token, KV head and group of 16 channels. The write, Triton (interpreted on a CPU) and the CPU
path, against the reference; decode and extend over a pool so written, against the float64
reference on the dequantised pool (exact up to float error) and on the unquantised one (within
what the format costs)."""

import pytest
import torch
from kernel_cases import (
    GPU,
    TOLERANCE,
    consecutive_pages,
    empty_pools,
    make_paged,
    on_device,
    rel_err,
    share_pages,
    stored_copy,
)

from radixrt.kernels import cpu, reference
from radixrt.kernels import decode as triton_decode
from radixrt.kernels import extend as triton_extend
from radixrt.kernels import kv_write as triton_kv_write
from radixrt.kernels.layout import FP8, INT4, INT4_GROUP, PagedKV

WRITE = {"triton": on_device(triton_kv_write.write_kv), "cpu": cpu.write_kv}
ATTEND = {
    "triton": (on_device(triton_decode.decode_attention), on_device(triton_extend.extend_attention)),
    "cpu": (cpu.decode_attention, cpu.extend_attention),
}
OTHER_FLOAT = {torch.float32: torch.bfloat16, torch.bfloat16: torch.float32, torch.float16: torch.bfloat16}
"""A float pool of another dtype than the compute's, for the "float" format."""
FORMATS = {"float": None, "int8": torch.int8, "fp8": FP8, "int4": INT4}


def pool_dtype(fmt: str, compute: torch.dtype) -> torch.dtype:
    return FORMATS[fmt] or OTHER_FLOAT[compute]


EXACT = {**TOLERANCE, torch.bfloat16: 2e-2}
"""Relative error allowed against the reference on the dequantised pool: the kernels round each
dequantised K/V row to the compute dtype, which in bfloat16 doubles the error of a bfloat16 pool."""
COST = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.int8: 1.5e-2, FP8: 5e-2, INT4: 1.5e-1}
"""Relative error a pool format adds against the unquantised float32 reference. The most measured
over these cases (decode, extend, shared prefixes, both paths, every compute dtype): a bfloat16
pool 2.5e-3, int8 1.0e-2, fp8 3.7e-2, int4 1.16e-1 (in groups of 32; groups of 16 err less)."""


def allowed(pool: torch.dtype, compute: torch.dtype) -> float:
    return COST[pool] + TOLERANCE[compute]


def dequantized(kv: PagedKV) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.dequantize_pool(kv.k, kv.k_scale), reference.dequantize_pool(kv.v, kv.v_scale)


def quantization_step(pool: torch.Tensor, scale: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """The most a round trip through the pool may move each value of ``new [tokens, kv_heads,
    head_dim]``: half an integer step (int8, int4, whose float16 zero adds its own rounding),
    half an e4m3 step (fp8: 3 mantissa bits, subnormal below 2**-6), or half a float step."""
    x = new.float().abs()
    if pool.dtype == torch.int8:
        return scale[..., None] * 0.5001
    if pool.dtype == FP8:
        return torch.maximum(x * 2.0**-4, scale[..., None] * 2.0**-10) * 1.0001
    if pool.dtype == INT4:
        groups = scale.shape[-1] // 2
        step = scale[..., :groups].float() * 0.5001 + scale[..., groups:].float().abs() * 2.0**-10
        return step.repeat_interleave(INT4_GROUP, -1)
    return x * torch.finfo(pool.dtype).eps * 0.5


def assert_same_write(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit for bit in the interpreter; a GPU divides in fewer correctly rounded steps, so a value
    may round the other way (one quantisation step, or float error in a scale)."""
    if not GPU:
        assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8))
    elif out.dtype == INT4:
        for shift in (0, 4):
            assert ((out >> shift & 15).int() - (ref >> shift & 15).int()).abs().max() <= 1
    elif out.dtype == torch.int8:
        assert (out.int() - ref.int()).abs().max() <= 1
    else:  # scales, float pools, fp8 (one e4m3 step: 3 mantissa bits)
        rtol = 2.0**-3 if out.dtype == FP8 else 1e-3
        torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=2.0**-9, equal_nan=True)


@pytest.mark.parametrize("impl", WRITE)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "page_size, kv_heads, head_dim, dtype",
    [(1, 2, 64, torch.float32), (16, 3, 128, torch.bfloat16), (64, 1, 32, torch.float16)],
)
def test_write(impl, fmt, page_size, kv_heads, head_dim, dtype, gen):
    num_pages, tokens = 6, 2 * page_size + 3
    slots = torch.randperm(num_pages * page_size, generator=gen)[:tokens].to(torch.int32)
    k_new = (torch.randn(tokens, kv_heads, head_dim, generator=gen) * 3 + 1).to(dtype)
    v_new = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    k_new[0] = v_new[0] = 0  # an all-zero vector still gets a usable scale
    pools = list(empty_pools(num_pages, page_size, kv_heads, head_dim, pool_dtype(fmt, dtype)))
    refs = [None if x is None else x.clone() for x in pools]
    WRITE[impl](pools[0], pools[1], slots, k_new, v_new, pools[2], pools[3])
    reference.write_kv(refs[0], refs[1], slots, k_new, v_new, refs[2], refs[3])
    for out, ref in zip(pools, refs):
        if out is not None:
            assert_same_write(out, ref)
    k, v, k_scale, v_scale = pools
    at = slots.long()
    for pool, scale, new in ((k, k_scale, k_new), (v, v_scale, v_new)):
        rows = pool.view(-1, *pool.shape[2:])[at]
        row_scales = None if scale is None else scale.view(-1, *scale.shape[2:])[at]
        back = reference.dequantize_pool(rows, row_scales)
        assert back.shape == new.shape
        assert ((back - new.double()).abs() <= quantization_step(rows, row_scales, new)).all()
    untouched = torch.ones(num_pages * page_size, dtype=torch.bool)
    untouched[at] = False
    assert back[0].eq(0).all()  # V's, as K's was
    if k_scale is None:
        assert k.view(-1, *k.shape[2:])[untouched].isnan().all()
    else:
        assert k_scale.view(-1, *k_scale.shape[2:])[untouched].isnan().all()
        assert not k_scale.view(-1, *k_scale.shape[2:])[at].isnan().any()


def test_write_scales_and_packing():
    """The shapes and dtypes of each format's scales; a zero vector's; int4's packing and zeros."""
    x = torch.zeros(2, 1, 64)
    x[1, 0] = torch.arange(64.0) % 16  # each group of 16: 0, 1, .. 15: scale 1, zero 0
    x[1, 0, 32:] += 2.0  # groups 2 and 3's zero: 2
    for dtype, scales, zero_scale in ((torch.int8, (1,), 1e-8), (FP8, (1,), 1e-8), (INT4, (1, 8), 2.0**-14)):
        k, v, k_scale, v_scale = empty_pools(2, 1, 1, 64, dtype)
        cpu.write_kv(k, v, torch.tensor([0, 1]), x, x, k_scale, v_scale)
        assert tuple(k_scale.shape[2:]) == scales and k_scale.dtype == (
            torch.float16 if dtype == INT4 else torch.float32
        )
        assert (
            k_scale[0, 0, 0].flatten()[0] == torch.tensor(zero_scale, dtype=k_scale.dtype) and k[0].float().eq(0).all()
        )
    assert k.shape == (2, 1, 1, 32) and k_scale[1, 0, 0].tolist() == [1.0] * 4 + [0.0, 0.0, 2.0, 2.0]
    assert k[1, 0, 0, :8].tolist() == [
        1 << 4 | 0,
        3 << 4 | 2,
        5 << 4 | 4,
        7 << 4 | 6,
        9 << 4 | 8,
        11 << 4 | 10,
        13 << 4 | 12,
        15 << 4 | 14,
    ]


@pytest.mark.parametrize("impl", WRITE)
def test_write_fp8_saturates(impl, gen):
    """A value whose scale rounds below max |x| / 448 still stores at most 448."""
    k, v, k_scale, v_scale = empty_pools(4, 16, 2, 64, FP8)
    k_new = torch.randn(3, 2, 64, generator=gen) * 10
    WRITE[impl](k, v, torch.tensor([0, 17, 63], dtype=torch.int32), k_new, k_new, k_scale, v_scale)
    assert k.float().abs().amax() == 448.0


@pytest.mark.parametrize("impl", WRITE)
def test_int4_needs_a_head_dim_its_groups_divide(impl):
    k = torch.zeros(4, 16, 2, 4, dtype=INT4)
    scales = torch.zeros(4, 16, 2, 1, dtype=torch.float16)
    with pytest.raises(ValueError, match="int4 KV pool needs head_dim a multiple of 16.*got head_dim 8"):
        WRITE[impl](k, k.clone(), torch.tensor([0]), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), scales, scales)
    kv = PagedKV(k, k.clone(), torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))
    assert kv.head_dim == 8
    with pytest.raises(ValueError, match="head_dim.* 8"):
        ATTEND[impl][0](torch.zeros(1, 4, 8), kv, torch.tensor([5], dtype=torch.int32))


# (lens, page_size, kv_heads, group, head_dim, dtype): page sizes 1, 16 and 64, GQA, head dims 64
# and 128; make_paged scatters the pages (even ids in random order).
DECODE_CASES = {
    "page1_gqa4": ([37, 5], 1, 2, 4, 64, torch.float32),
    "page16_gqa4_dim128": ([70, 17], 16, 2, 4, 128, torch.bfloat16),
    "page64_dim128": ([130, 64], 64, 1, 2, 128, torch.float32),
    "page16_gqa8_fp16": ([40, 1], 16, 1, 8, 64, torch.float16),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode(impl, fmt, case, gen):
    lens, page_size, kv_heads, group, head_dim, dtype = DECODE_CASES[case]
    kv = make_paged(gen, lens, page_size, kv_heads, head_dim, torch.float32)
    stored = stored_copy(kv, pool_dtype(fmt, dtype), WRITE[impl])
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, stored, seq_lens, out=torch.full_like(q, float("nan")))
    assert out.dtype == dtype and out.shape == q.shape
    table = kv.indptr, kv.indices, seq_lens
    exact = reference.decode_attention(q, *dequantized(stored), *table)
    assert rel_err(out, exact) < EXACT[dtype]
    scaled = reference.decode_attention(q, stored.k, stored.v, *table, k_scale=stored.k_scale, v_scale=stored.v_scale)
    assert torch.allclose(scaled, exact, rtol=0, atol=1e-12)
    assert rel_err(out, reference.decode_attention(q, kv.k, kv.v, *table)) < allowed(stored.k.dtype, dtype)


# (prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype)
EXTEND_CASES = {
    "page1": ([30, 0], [25, 3], 1, 2, 4, 64, torch.float32),
    "page16_dim128": ([33, 5], [20, 1], 16, 2, 4, 128, torch.bfloat16),
    "page64_decode_rows": ([65, 9, 64], [1, 1, 9], 64, 1, 8, 64, torch.float16),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", EXTEND_CASES)
def test_extend(impl, fmt, case, gen):
    prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype = EXTEND_CASES[case]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], page_size, kv_heads, head_dim, torch.float32)
    stored = stored_copy(kv, pool_dtype(fmt, dtype), WRITE[impl])
    total = sum(new_lens)
    q = torch.randn(total, kv_heads * group, head_dim, generator=gen).to(dtype)
    k_new, v_new = (torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype) for _ in range(2))
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, stored, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    assert out.dtype == dtype and out.shape == q.shape
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(q, k_new, v_new, *dequantized(stored), *table)
    assert rel_err(out, exact) < EXACT[dtype]
    unquantized = reference.extend_attention(q, k_new, v_new, kv.k, kv.v, *table)
    assert rel_err(out, unquantized) < allowed(stored.k.dtype, dtype)


@pytest.mark.parametrize("consecutive", [False, True], ids=["scattered", "consecutive"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("impl", ATTEND)
def test_shared_prefix(impl, fmt, consecutive, gen, monkeypatch):
    """Two sequences on the same prefix pages (written once, with their scales) read the same
    values; the CPU path attends such a prefix once for both (forced here for small shapes), read
    in place when its pages are consecutive."""
    monkeypatch.setattr(cpu, "SHARED_TOKENS_WORTH_IT", 0)
    lens = [100, 90]
    kv = make_paged(gen, lens, 16, 2, 64, torch.float32)
    kv = share_pages(consecutive_pages(kv, 0, 5) if consecutive else kv, {1: (0, 5)})
    stored = stored_copy(kv, pool_dtype(fmt, torch.float32), WRITE[impl])
    [shared] = cpu.plan_pool_reads(stored, [0, 1], lens).shared
    assert (shared.slots is not None) == consecutive
    q = torch.randn(2, 8, 64, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    decode, extend = ATTEND[impl]
    table = kv.indptr, kv.indices, seq_lens
    out = decode(q, stored, seq_lens, out=torch.full_like(q, float("nan")))
    assert rel_err(out, reference.decode_attention(q, *dequantized(stored), *table)) < 1e-5
    assert rel_err(out, reference.decode_attention(q, kv.k, kv.v, *table)) < allowed(stored.k.dtype, torch.float32)

    prefix = seq_lens - 1
    k_new, v_new = (torch.randn(2, 2, 64, generator=gen) for _ in range(2))
    qo_indptr = torch.arange(3, dtype=torch.int32)
    out = extend(q, k_new, v_new, stored, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    ref = reference.extend_attention(q, k_new, v_new, *dequantized(stored), qo_indptr, kv.indptr, kv.indices, prefix)
    assert rel_err(out, ref) < 1e-5


SLOTS = (4, 16, 2)  # [num_pages, page_size, kv_heads] of the pools below
BAD_SCALES = {
    "int8_missing": (torch.int8, None, "an int8 KV pool needs k_scale: float32 \\[4, 16, 2\\]"),
    "int8_per_head": (torch.int8, torch.ones(2), r"k_scale of an int8 KV pool must be \[4, 16, 2\], got \[2\]"),
    "fp8_per_head": (FP8, torch.ones(2), r"k_scale of an fp8 KV pool must be \[4, 16, 2\], got \[2\]"),
    "fp8_float16": (FP8, torch.ones(SLOTS, dtype=torch.float16), "k_scale of an fp8 KV pool must be float32"),
    "int8_strided": (torch.int8, torch.ones(4, 16, 4)[..., ::2], "k_scale of an int8 KV pool must be contiguous"),
    "int4_missing": (INT4, None, r"an int4 KV pool needs k_scale: float16 \[4, 16, 2, 8\]"),
    "int4_no_zeros": (
        INT4,
        torch.ones(*SLOTS, 4, dtype=torch.float16),
        r"must be \[4, 16, 2, 8\], got \[4, 16, 2, 4\]",
    ),
    "int4_float32": (INT4, torch.ones(*SLOTS, 8), "k_scale of an int4 KV pool must be float16"),
}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("bad", BAD_SCALES)
def test_bad_scales_are_named(impl, bad):
    dtype, k_scale, message = BAD_SCALES[bad]
    k, v, _, v_scale = empty_pools(*SLOTS, 64, dtype)
    kv = PagedKV(k, v, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32), k_scale, v_scale)
    new = torch.zeros(1, 2, 64)
    with pytest.raises(ValueError, match=message):
        ATTEND[impl][0](torch.zeros(1, 4, 64), kv, torch.tensor([5], dtype=torch.int32))
    with pytest.raises(ValueError, match=message):
        WRITE[impl](k, v, torch.tensor([0]), new, new, k_scale, v_scale)
    with pytest.raises(ValueError, match="KV pool needs v_scale"):
        WRITE[impl](k, v, torch.tensor([0]), new, new, v_scale, None)


@pytest.mark.parametrize("impl", ATTEND)
def test_mismatched_or_unknown_pools_are_named(impl):
    k = torch.zeros(*SLOTS, 64, dtype=torch.int8)
    scales = torch.ones(SLOTS), torch.ones(SLOTS)
    table = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32)
    new = torch.zeros(1, 2, 64)
    with pytest.raises(ValueError, match="the K pool is int8 but the V pool is torch.float32"):
        WRITE[impl](k, k.float(), torch.tensor([0]), new, new, *scales)
    with pytest.raises(ValueError, match="the K pool is int8 but the V pool"):
        ATTEND[impl][0](
            torch.zeros(1, 4, 64), PagedKV(k, k.float(), *table, *scales), torch.tensor([5], dtype=torch.int32)
        )
    wide = torch.zeros(*SLOTS, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="a KV pool must be float32, .* got torch.float64"):
        WRITE[impl](wide, wide.clone(), torch.tensor([0]), new, new)
    with pytest.raises(ValueError, match="new K and V must be float32, float16 or bfloat16"):
        WRITE[impl](k.float(), k.float(), torch.tensor([0]), new.double(), new.double())
