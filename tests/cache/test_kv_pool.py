import pytest
import torch

from radixrt.cache import KVPool

SMOLLM2 = dict(num_layers=30, kv_heads=3, head_dim=64)


def test_shapes_and_bytes_per_token():
    pool = KVPool(**SMOLLM2, page_size=16, dtype=torch.float16, num_pages=10)
    assert pool.k.shape == pool.v.shape == (30, 10, 16, 3, 64)
    assert pool.k[0].shape == (10, 16, 3, 64)
    assert pool.bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert pool.nbytes == pool.k.nbytes + pool.v.nbytes
    assert pool.num_tokens == 160


def test_sized_from_a_byte_budget():
    pool = KVPool(**SMOLLM2, page_size=1, dtype=torch.float32, max_bytes=10 * 2**20)
    assert pool.num_pages == 10 * 2**20 // (2 * 30 * 3 * 64 * 4)
    assert pool.nbytes <= 10 * 2**20


def test_budget_too_small_names_the_page_size():
    with pytest.raises(ValueError, match="holds no page"):
        KVPool(**SMOLLM2, page_size=64, max_bytes=1000)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_pages=4, max_bytes=1 << 20)])
def test_exactly_one_size(kwargs):
    with pytest.raises(ValueError, match="exactly one"):
        KVPool(**SMOLLM2, page_size=1, **kwargs)


def test_invalid_dimension():
    with pytest.raises(ValueError, match="kv_heads must be positive"):
        KVPool(num_layers=2, kv_heads=0, head_dim=64, page_size=1, num_pages=4)


FP8 = torch.float8_e4m3fn
INT4 = torch.uint8
# bytes one token's K (or V) takes per layer and KV head at head_dim 64: values, then scales
ROW_BYTES = {
    torch.float32: 64 * 4,
    torch.bfloat16: 64 * 2,
    torch.float16: 64 * 2,
    torch.int8: 64 + 4,
    FP8: 64 + 4,
    INT4: 32 + 4 * 2 * 2,  # packed, then 4 groups' float16 scale and zero
}
# the scales' trailing shape after [layers, pages, page_size, kv_heads] and their dtype
SCALES = {torch.int8: ((), torch.float32), FP8: ((), torch.float32), INT4: ((8,), torch.float16)}


@pytest.mark.parametrize("dtype", ROW_BYTES, ids=str)
def test_every_kv_format_counts_its_bytes_and_keeps_its_scales_with_the_pages(dtype):
    pool = KVPool(**SMOLLM2, page_size=16, dtype=dtype, num_pages=4)
    layers, heads = SMOLLM2["num_layers"], SMOLLM2["kv_heads"]
    assert pool.bytes_per_token == 2 * layers * heads * ROW_BYTES[dtype]
    assert pool.nbytes == sum(t.nbytes for t in pool.tensors())
    assert pool.head_dim == 64 and pool.k.shape == pool.v.shape == (layers, 4, 16, heads, 32 if dtype == INT4 else 64)
    if dtype not in SCALES:
        assert pool.scales(0) == (None, None) and pool.tensors() == [pool.k, pool.v]
        return
    trailing, scale_dtype = SCALES[dtype]
    assert len(pool.tensors()) == 4 and all(t.shape[:2] == (layers, 4) for t in pool.tensors())
    for scale in pool.scales(1):
        assert scale.shape == (4, 16, heads, *trailing) and scale.dtype == scale_dtype


def test_int4_holds_more_than_two_and_a_half_times_the_tokens_of_bf16():
    budget = 1 << 24
    bf16 = KVPool(**SMOLLM2, page_size=16, dtype=torch.bfloat16, max_bytes=budget)
    int4 = KVPool(**SMOLLM2, page_size=16, dtype=INT4, max_bytes=budget)
    assert int4.num_tokens >= 2.6 * bf16.num_tokens and int4.nbytes <= budget  # 256 bytes a head-token against 96


def test_int4_needs_a_head_dim_its_groups_divide():
    with pytest.raises(ValueError, match="multiple of 16 .* got head_dim 24"):
        KVPool(num_layers=2, kv_heads=2, head_dim=24, page_size=1, num_pages=4, dtype=INT4)


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="a KV pool must be float32, .* got torch.int16"):
        KVPool(**SMOLLM2, page_size=1, num_pages=4, dtype=torch.int16)
