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


def test_an_int8_pool_keeps_a_scale_per_token_and_head_and_counts_it():
    pool = KVPool(**SMOLLM2, page_size=16, dtype=torch.int8, num_pages=4)
    assert pool.k_scale.shape == (SMOLLM2["num_layers"], 4, 16, SMOLLM2["kv_heads"]) == pool.v_scale.shape
    per_token = 2 * SMOLLM2["num_layers"] * SMOLLM2["kv_heads"] * (SMOLLM2["head_dim"] + 4)
    assert pool.bytes_per_token == per_token and len(pool.tensors()) == 4
    assert pool.scales(1)[0].shape == (4, 16, SMOLLM2["kv_heads"])
    half = KVPool(**SMOLLM2, page_size=16, dtype=torch.float16, num_pages=4)
    assert half.scales(0) == (None, None) and pool.bytes_per_token < half.bytes_per_token
