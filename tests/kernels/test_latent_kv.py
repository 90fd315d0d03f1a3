"""MLA's cache: V is the first channels of K's rows (one latent "head" per token: kv_lora_rank
channels, then the RoPE key), stored once. Decode and extend read it, Triton (interpreted on a
CPU) and the CPU path, against the float64 reference given a separate V pool of the same values,
on a float pool and an int8 and an int4 one (V dequantised with K's scales); the write stores K
alone; and the mistakes are named."""

import pytest
import torch
from kernel_cases import empty_pool, make_paged, rel_err
from test_kv_formats import ATTEND, EXACT, WRITE, pool_dtype

from radixrt.cache import KVPool
from radixrt.kernels import reference
from radixrt.kernels.layout import PagedKV, check_write

PAGE_SIZE, GROUP = 8, 4
DIMS = ((576, 512), (96, 64))


def latent_pool(kv: PagedKV, dtype: torch.dtype, write) -> PagedKV:
    """``kv``'s K written into a pool of ``dtype`` with V a view of K's first channels."""
    page_size, k_dim, v_dim = kv.page_size, kv.k_dim, kv.v_dim
    pages = kv.indices.long().unique()
    slots = (pages[:, None] * page_size + torch.arange(page_size)).flatten()
    k, k_scale = empty_pool(kv.k.shape[0], page_size, 1, k_dim, dtype)
    v = k[..., : k.shape[-1] * v_dim // k_dim]
    write(k, v, slots.to(torch.int32), kv.k.view(-1, 1, k_dim)[slots], None, k_scale, None)
    return PagedKV(k, v, kv.indptr, kv.indices, k_scale, k_scale)


def references(stored: PagedKV, run) -> tuple:
    """``run(k, v)`` on the pool as stored (V a separate copy of K's dequantised first channels)."""
    k = reference.dequantize_pool(stored.k, stored.k_scale)
    return run(k, k[..., : stored.v_dim].clone())


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("group", [GROUP, 40])
def test_decode(impl, fmt, dims, group, gen):
    """``group`` 40: wide heads go 16 to a program, so three blocks of query heads, the last part-filled."""
    k_dim, v_dim = dims
    lens = [13, 6]
    kv = make_paged(gen, lens, PAGE_SIZE, 1, k_dim, torch.float32, v_dim)
    stored = latent_pool(kv, pool_dtype(fmt, torch.float32), WRITE[impl])
    assert stored.v_in_k
    q = torch.randn(len(lens), group, k_dim, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, stored, seq_lens, sm_scale=0.07)
    table = kv.indptr, kv.indices, seq_lens
    exact = references(stored, lambda k, v: reference.decode_attention(q, k, v, *table, sm_scale=0.07))
    assert out.shape == (2, group, v_dim)
    assert rel_err(out, exact) < EXACT[torch.float32]


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
@pytest.mark.parametrize("dims", DIMS)
def test_extend(impl, fmt, dims, gen):
    """A prefix ending mid-page, none, and a lone token after a prefix; the new tokens' V is
    their K's first channels, as the model passes it (a view)."""
    k_dim, v_dim = dims
    prefix_lens, new_lens = [11, 0, 5], [4, 3, 1]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], PAGE_SIZE, 1, k_dim, torch.float32, v_dim)
    stored = latent_pool(kv, pool_dtype(fmt, torch.float32), WRITE[impl])
    total = sum(new_lens)
    q = torch.randn(total, GROUP, k_dim, generator=gen)
    k_new = torch.randn(total, 1, k_dim, generator=gen)
    v_new = k_new[..., :v_dim]
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, stored, qo_indptr, prefix)
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = references(stored, lambda k, v: reference.extend_attention(q, k_new, v_new.clone(), k, v, *table))
    assert rel_err(out, exact) < EXACT[torch.float32]


@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
def test_write_stores_k_alone(fmt, gen):
    """Triton and the CPU path store the same K rows and scales; V, a view, reads them."""
    dtype = pool_dtype(fmt, torch.float32)
    slots = torch.tensor([3, 9, 12], dtype=torch.int32)
    k_new = torch.randn(3, 1, 576, generator=gen) * 2 + 1
    pools = []
    for impl in ("triton", "cpu"):
        k, k_scale = empty_pool(2, PAGE_SIZE, 1, 576, dtype)
        WRITE[impl](k, k[..., : k.shape[-1] * 512 // 576], slots, k_new, None, k_scale, None)
        pools.append((k, k_scale))
    (k_t, s_t), (k_c, s_c) = pools
    written = slots.long()
    assert torch.equal(
        k_t.view(-1, k_t.shape[-1])[written].view(torch.uint8), k_c.view(-1, k_c.shape[-1])[written].view(torch.uint8)
    )
    if s_t is not None:
        assert torch.equal(s_t.view(-1, *s_t.shape[3:])[written], s_c.view(-1, *s_c.shape[3:])[written])


def test_kv_pool_stores_the_latent_once():
    """A pool with V in K holds K's bytes alone; its V is a view; the tiers move K (and scales) only."""
    mla = KVPool(
        num_layers=2, kv_heads=1, head_dim=576, v_head_dim=512, v_in_k=True, page_size=4, num_pages=3, dtype=torch.int8
    )
    separate = KVPool(
        num_layers=2, kv_heads=1, head_dim=576, v_head_dim=512, page_size=4, num_pages=3, dtype=torch.int8
    )
    assert mla.bytes_per_token == 2 * (576 + 4)
    assert separate.bytes_per_token == 2 * (576 + 4 + 512 + 4)
    assert mla.v.data_ptr() == mla.k.data_ptr() and mla.v.shape[-1] == 512
    assert mla.v_scale is mla.k_scale
    assert len(mla.tensors()) == 2 and len(separate.tensors()) == 4
    assert PagedKV(mla.k[0], mla.v[0], torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)).v_in_k
    with pytest.raises(ValueError, match="at most head_dim"):
        KVPool(num_layers=1, kv_heads=1, head_dim=64, v_head_dim=128, v_in_k=True, page_size=4, num_pages=1)


def test_mistakes_are_named():
    k = torch.zeros(1, PAGE_SIZE, 1, 96)
    slots, new = torch.zeros(1, dtype=torch.int32), torch.zeros(1, 1, 96)
    with pytest.raises(ValueError, match="write K alone, with v_new=None"):
        check_write(k, k[..., :64], slots, new, new[..., :64], None, None)
    with pytest.raises(ValueError, match="v_new may be left out only when V is the first channels"):
        check_write(k, torch.zeros(1, PAGE_SIZE, 1, 64), slots, new, None, None, None)
