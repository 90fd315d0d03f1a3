"""K and V of different head dims (DeepSeek's MLA: K 192 / V 128 non-absorbed, K 576 / V 512
absorbed): decode and extend, Triton (interpreted on a CPU) and the CPU path, against the float64
reference, on float pools and an int8 and an int4 one; the write, Triton against the CPU path and
the reference; and the dims refused, named."""

import pytest
import torch
from kernel_cases import empty_pools, make_paged, rel_err, stored_copy
from test_kv_formats import ATTEND, EXACT, WRITE, allowed, assert_same_write, dequantized, pool_dtype

from radixrt.kernels import reference
from radixrt.kernels.layout import INT4, PagedKV, check_head_dim, check_write

PAIRS = ((192, 128), (96, 64), (576, 512))
PAGE_SIZE, KV_HEADS, GROUP = 8, 1, 2


def run_decode(impl, dims, pool, compute, gen):
    """Two sequences over scattered pages; the output and the references on the pool as stored
    and as given."""
    k_dim, v_dim = dims
    lens = [13, 6]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, k_dim, torch.float32, v_dim)
    stored = kv if pool is None else stored_copy(kv, pool, WRITE[impl])
    q = torch.randn(len(lens), KV_HEADS * GROUP, k_dim, generator=gen).to(compute)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = ATTEND[impl][0](q, stored, seq_lens, out=q.new_full((len(lens), KV_HEADS * GROUP, v_dim), float("nan")))
    table = kv.indptr, kv.indices, seq_lens
    return (
        out,
        reference.decode_attention(q, *dequantized(stored), *table),
        reference.decode_attention(q, kv.k, kv.v, *table),
    )


def run_extend(impl, dims, pool, compute, gen):
    """Two sequences: one with a cached prefix that ends mid-page, one without; then a lone new
    token after a prefix (the CPU path's decode-like case)."""
    k_dim, v_dim = dims
    prefix_lens, new_lens = [11, 0, 5], [4, 3, 1]
    lens = [p + n for p, n in zip(prefix_lens, new_lens)]
    kv = make_paged(gen, lens, PAGE_SIZE, KV_HEADS, k_dim, torch.float32, v_dim)
    stored = kv if pool is None else stored_copy(kv, pool, WRITE[impl])
    total = sum(new_lens)
    q = torch.randn(total, KV_HEADS * GROUP, k_dim, generator=gen).to(compute)
    k_new = torch.randn(total, KV_HEADS, k_dim, generator=gen).to(compute)
    v_new = torch.randn(total, KV_HEADS, v_dim, generator=gen).to(compute)
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = ATTEND[impl][1](q, k_new, v_new, stored, qo_indptr, prefix)
    table = qo_indptr, kv.indptr, kv.indices, prefix
    exact = reference.extend_attention(q, k_new, v_new, *dequantized(stored), *table)
    return out, exact, reference.extend_attention(q, k_new, v_new, kv.k, kv.v, *table)


RUN = {"decode": run_decode, "extend": run_extend}


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("kernel", RUN)
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dims", PAIRS)
def test_float_pool(impl, kernel, compute, dims, gen):
    out, exact, _ = RUN[kernel](impl, dims, None, compute, gen)
    assert out.shape[-1] == dims[1]
    assert rel_err(out, exact) < EXACT[compute]


@pytest.mark.parametrize("impl", ATTEND)
@pytest.mark.parametrize("kernel", RUN)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_pool(impl, kernel, fmt, gen):
    pool = pool_dtype(fmt, torch.float32)
    out, exact, unquantized = RUN[kernel](impl, (192, 128), pool, torch.float32, gen)
    assert rel_err(out, exact) < EXACT[torch.float32]
    assert rel_err(out, unquantized) < allowed(pool, torch.float32)


@pytest.mark.parametrize("fmt", ["float", "int8", "fp8", "int4"])
@pytest.mark.parametrize("dims", PAIRS)
def test_write(fmt, dims, gen):
    """Triton stores what the CPU path and the reference do, each tensor at its own dim."""
    k_dim, v_dim = dims
    num_pages, tokens = 2, 5
    slots = torch.randperm(num_pages * PAGE_SIZE, generator=gen)[:tokens].to(torch.int32)
    k_new = torch.randn(tokens, KV_HEADS, k_dim, generator=gen) * 3 + 1
    v_new = torch.randn(tokens, KV_HEADS, v_dim, generator=gen).to(torch.bfloat16)
    pool = pool_dtype(fmt, torch.float32)
    pools = list(empty_pools(num_pages, PAGE_SIZE, KV_HEADS, k_dim, pool, v_dim))
    refs = [[None if x is None else x.clone() for x in pools] for _ in range(2)]
    WRITE["triton"](pools[0], pools[1], slots, k_new, v_new, pools[2], pools[3])
    WRITE["cpu"](refs[0][0], refs[0][1], slots, k_new, v_new, refs[0][2], refs[0][3])
    reference.write_kv(refs[1][0], refs[1][1], slots, k_new, v_new, refs[1][2], refs[1][3])
    for i, out in enumerate(pools):
        if out is not None:
            assert_same_write(out, refs[0][i])
            assert_same_write(out, refs[1][i])


def test_head_dims_run():
    check_head_dim(576, 512)
    check_head_dim(192, 128)
    check_head_dim(512)  # one dim: K and V alike


@pytest.mark.parametrize(
    ("k_dim", "v_dim", "message"),
    [
        (20, 128, "K head_dim must be a multiple of 8 from 16 to 576, got 20"),
        (584, 512, "K head_dim must be a multiple of 8 from 16 to 576, got 584"),
        (192, 600, "V head_dim must be a multiple of 8 from 16 to 512, got 600"),
        (576, 576, "V head_dim must be a multiple of 8 from 16 to 512, got 576"),
    ],
)
def test_other_head_dims_are_named(k_dim, v_dim, message, gen):
    with pytest.raises(ValueError, match=message):
        check_head_dim(k_dim, v_dim)
    k, v = (torch.zeros(1, PAGE_SIZE, KV_HEADS, dim) for dim in (k_dim, v_dim))
    new = [torch.zeros(1, KV_HEADS, dim) for dim in (k_dim, v_dim)]
    slots = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):  # check_write checks the dims too
        check_write(k, v, slots, *new, None, None)
    kv = PagedKV(k, v, torch.tensor([0, 1], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    for decode, _ in ATTEND.values():
        with pytest.raises(ValueError, match=message):
            decode(torch.zeros(1, KV_HEADS, k_dim), kv, torch.ones(1, dtype=torch.int32))


def test_int4_needs_whole_groups_in_v():
    message = "int4 KV pool needs head_dim a multiple of 16.*got head_dim 24"
    with pytest.raises(ValueError, match=message):
        empty_pools(1, PAGE_SIZE, KV_HEADS, 64, INT4, 24)
    k, v = torch.zeros(1, PAGE_SIZE, KV_HEADS, 32, dtype=INT4), torch.zeros(1, PAGE_SIZE, KV_HEADS, 12, dtype=INT4)
    scale = torch.zeros(1, PAGE_SIZE, KV_HEADS, 8, dtype=torch.float16)
    new = torch.zeros(1, KV_HEADS, 64), torch.zeros(1, KV_HEADS, 24)
    for write in WRITE.values():
        with pytest.raises(ValueError, match=message):
            write(k, v, torch.zeros(1, dtype=torch.int32), *new, scale, scale)


def test_mismatched_new_kv_is_named():
    """extend_attention's k_new must have the K dim and v_new the V one."""
    kv = PagedKV(
        torch.zeros(1, PAGE_SIZE, KV_HEADS, 192),
        torch.zeros(1, PAGE_SIZE, KV_HEADS, 128),
        torch.tensor([0, 1], dtype=torch.int32),
        torch.zeros(1, dtype=torch.int32),
    )
    q, k_new = torch.zeros(2, KV_HEADS, 192), torch.zeros(2, KV_HEADS, 192)
    indptr, prefix = torch.tensor([0, 2], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"k_new and v_new must be \[2, 1, 192\] and \[2, 1, 128\]"):
        ATTEND["triton"][1](q, k_new, k_new, kv, indptr, prefix)


def test_decode_and_write_sync_free_with_num_splits(monkeypatch, gen):
    """With ``num_splits`` given, the Triton decode (and the write) read no tensor value on the
    host (what CUDA-graph capture forbids): the host-reading calls are made to fail."""
    kv = make_paged(gen, [13, 6], PAGE_SIZE, KV_HEADS, 192, torch.float32, 128)
    q = torch.randn(2, KV_HEADS * GROUP, 192, generator=gen)
    seq_lens = torch.tensor([13, 6], dtype=torch.int32)
    k, v, _, _ = empty_pools(2, PAGE_SIZE, KV_HEADS, 192, torch.float32, 128)
    new = torch.randn(3, KV_HEADS, 192, generator=gen), torch.randn(3, KV_HEADS, 128, generator=gen)
    slots = torch.tensor([0, 5, 9], dtype=torch.int32)

    def synced(*args, **kwargs):
        raise AssertionError("a device-to-host sync")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__int__", "__bool__", "__index__"):
            patched.setattr(torch.Tensor, name, synced)
        patched.setattr(torch.Tensor, "nonzero", synced)
        ATTEND["triton"][0](q, kv, seq_lens, num_splits=2)
        WRITE["triton"](k, v, slots, *new)
        with pytest.raises(AssertionError, match="sync"):  # the guard works: choosing splits reads max(seq_lens)
            ATTEND["triton"][0](q, kv, seq_lens)
