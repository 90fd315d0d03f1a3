"""Writing new K/V into the paged pool, Triton (interpreted on a CPU) and the CPU path, against
the reference; every other slot must stay untouched."""

import pytest
import torch
from kernel_cases import on_device

from radixrt.kernels import cpu, reference
from radixrt.kernels import kv_write as triton_kv_write

IMPLS = {"triton": on_device(triton_kv_write.write_kv), "cpu": cpu.write_kv}


def pools(num_pages, page_size, kv_heads, head_dim, dtype):
    shape = (num_pages, page_size, kv_heads, head_dim)
    return torch.full(shape, 7.0).to(dtype), torch.full(shape, -7.0).to(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "page_size, kv_heads, head_dim, dtype",
    [(1, 2, 64, torch.float32), (16, 3, 64, torch.float16), (64, 1, 128, torch.bfloat16), (16, 4, 128, torch.float32)],
)
def test_write_kv(impl, page_size, kv_heads, head_dim, dtype, gen):
    num_pages, tokens = 12, 2 * page_size + 3
    slots = torch.randperm(num_pages * page_size, generator=gen)[:tokens]
    k_new = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    v_new = torch.randn(tokens, kv_heads, head_dim, generator=gen).to(dtype)
    k, v = pools(num_pages, page_size, kv_heads, head_dim, dtype)
    k_ref, v_ref = k.clone(), v.clone()
    IMPLS[impl](k, v, slots, k_new, v_new)
    reference.write_kv(k_ref, v_ref, slots, k_new, v_new)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
    assert (k.view(-1, kv_heads, head_dim)[slots] == k_new).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "new_dtype, pool_dtype",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.float16)],
)
def test_write_kv_casts_into_another_float_pool(impl, new_dtype, pool_dtype, gen):
    """New K/V of one float dtype go into a pool of another, rounded to nearest as ``.to`` does."""
    k, v = pools(4, 16, 2, 64, pool_dtype)
    slots = torch.tensor([0, 17, 63], dtype=torch.int32)
    k_new, v_new = (torch.randn(3, 2, 64, generator=gen).to(new_dtype) for _ in range(2))
    IMPLS[impl](k, v, slots, k_new, v_new)
    assert torch.equal(k.view(-1, 2, 64)[slots.long()], k_new.to(pool_dtype))
    assert torch.equal(v.view(-1, 2, 64)[slots.long()], v_new.to(pool_dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_write_kv_errors(impl):
    k, v = pools(4, 16, 2, 64, torch.float16)
    with pytest.raises(ValueError, match="new K and V must be"):
        IMPLS[impl](
            k,
            v,
            torch.tensor([0, 1]),
            torch.zeros(3, 2, 64, dtype=torch.float16),
            torch.zeros(3, 2, 64, dtype=torch.float16),
        )
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="an fp8 KV pool needs k_scale"):
        IMPLS[impl](k8, v8, torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64))
