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
def test_write_kv_fp8_saturates(impl, gen):
    k, v = (p.to(torch.float8_e4m3fn) for p in pools(4, 16, 2, 64, torch.float32))
    k_ref, v_ref = k.clone(), v.clone()
    slots = torch.tensor([0, 17, 63], dtype=torch.int32)
    k_new = torch.randn(3, 2, 64, generator=gen) * 10
    v_new = torch.randn(3, 2, 64, generator=gen)
    k_scale, v_scale = torch.tensor([0.01, 0.5]), torch.tensor([0.1, 0.02])
    IMPLS[impl](k, v, slots, k_new, v_new, k_scale, v_scale)
    reference.write_kv(k_ref, v_ref, slots, k_new, v_new, k_scale, v_scale)
    assert torch.equal(k.float(), k_ref.float()) and torch.equal(v.float(), v_ref.float())
    assert k.float().abs().max() == 448.0  # 10 / 0.01 saturates


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
    with pytest.raises(ValueError, match="does not match the pool"):
        IMPLS[impl](k, v, torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64))
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="needs k_scale"):
        IMPLS[impl](k8, v8, torch.tensor([0]), torch.zeros(1, 2, 64), torch.zeros(1, 2, 64))
