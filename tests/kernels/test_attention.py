"""Decode and extend attention, Triton (interpreted on a CPU) and the CPU path, against the
float64 reference."""

import pytest
import torch
from kernel_cases import TOLERANCE, consecutive_pages, make_paged, on_device, rel_err, share_pages

from radixrt.kernels import cpu, reference
from radixrt.kernels import decode as triton_decode
from radixrt.kernels import extend as triton_extend
from radixrt.kernels.layout import PagedKV

IMPLS = {
    "triton": (on_device(triton_decode.decode_attention), on_device(triton_extend.extend_attention)),
    "cpu": (cpu.decode_attention, cpu.extend_attention),
}

# (lens, page_size, kv_heads, group, head_dim, dtype): every page size, head dim, GQA ratio and
# dtype appears, without the full cross product (the interpreter is slow).
DECODE_CASES = {
    "one_token": ([1], 16, 2, 2, 64, torch.float32),
    "page_boundaries": ([16, 17, 32, 33], 16, 2, 1, 64, torch.float32),
    "mixed_1_and_2000": ([1, 2000, 1], 16, 1, 4, 64, torch.float16),
    "page1_fp32": ([37, 5], 1, 2, 2, 64, torch.float32),
    "page1_bf16": ([37, 5], 1, 2, 2, 64, torch.bfloat16),
    "page16_fp16": ([130, 7], 16, 2, 3, 64, torch.float16),
    "page16_bf16": ([130, 7], 16, 2, 3, 64, torch.bfloat16),
    "page64_fp32": ([130, 64, 65], 64, 1, 2, 64, torch.float32),
    "page64_fp16": ([130, 64, 65], 64, 1, 2, 64, torch.float16),
    "dim128_gqa1": ([40, 90], 16, 4, 1, 128, torch.float16),
    "dim128_gqa2": ([40, 90], 16, 2, 2, 128, torch.bfloat16),
    "dim64_gqa4": ([40, 90], 16, 2, 4, 64, torch.float32),
    "dim128_gqa8": ([40, 90], 16, 1, 8, 128, torch.float16),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", DECODE_CASES)
def test_decode(impl, case, gen):
    lens, page_size, kv_heads, group, head_dim, dtype = DECODE_CASES[case]
    kv = make_paged(gen, lens, page_size, kv_heads, head_dim, dtype)
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = IMPLS[impl][0](q, kv, seq_lens, out=torch.full_like(q, float("nan")))
    ref = reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_decode_splits_merge_exactly(num_splits, gen):
    """More splits than a short sequence has blocks leaves some splits empty."""
    lens = [1, 100, 300]
    kv = make_paged(gen, lens, 16, 2, 64, torch.float32)
    q = torch.randn(3, 4, 64, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = on_device(triton_decode.decode_attention)(
        q, kv, seq_lens, num_splits=num_splits, out=torch.full_like(q, float("nan"))
    )
    ref = reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens)
    assert rel_err(out, ref) < 1e-5


def test_more_splits_for_small_batches_with_long_contexts():
    device = torch.device("cpu")
    assert (
        triton_decode.choose_num_splits(1, 1, 32768, device)
        > triton_decode.choose_num_splits(64, 8, 32768, device)
        == 1
    )
    assert triton_decode.choose_num_splits(1, 1, 100, device) == 1


# (prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype)
EXTEND_CASES = {
    "empty_prefix": ([0], [17], 16, 2, 2, 64, torch.float32),
    "several_page_prefix": ([48], [20], 16, 2, 1, 64, torch.float32),
    "ragged_batch": ([0, 33, 64, 5], [1, 40, 7, 70], 16, 1, 2, 64, torch.float16),
    "page1_bf16": ([30], [25], 1, 2, 2, 64, torch.bfloat16),
    "page16_bf16": ([30, 0], [25, 3], 16, 2, 2, 64, torch.bfloat16),
    "page64_fp32": ([64, 65], [9, 40], 64, 1, 3, 64, torch.float32),
    "page64_fp16": ([64, 65], [9, 40], 64, 1, 3, 64, torch.float16),
    "dim128_gqa1": ([20], [33], 16, 2, 1, 128, torch.float32),
    "dim128_gqa4": ([20], [33], 16, 1, 4, 128, torch.bfloat16),
    "dim64_gqa8": ([20, 3], [33, 70], 16, 1, 8, 64, torch.float16),
    "decode_rows_in_a_mixed_batch": ([40, 0, 100, 17, 16], [1, 5, 1, 1, 1], 16, 2, 2, 64, torch.float32),
    "decode_rows_page1": ([9, 30], [1, 1], 1, 1, 3, 64, torch.bfloat16),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", EXTEND_CASES)
def test_extend(impl, case, gen):
    prefix_lens, new_lens, page_size, kv_heads, group, head_dim, dtype = EXTEND_CASES[case]
    kv = make_paged(gen, [p + n for p, n in zip(prefix_lens, new_lens)], page_size, kv_heads, head_dim, dtype)
    total = sum(new_lens)
    q = torch.randn(total, kv_heads * group, head_dim, generator=gen).to(dtype)
    k_new = torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype)
    v_new = torch.randn(total, kv_heads, head_dim, generator=gen).to(dtype)
    qo_indptr = torch.tensor([0, *torch.tensor(new_lens).cumsum(0).tolist()], dtype=torch.int32)
    prefix = torch.tensor(prefix_lens, dtype=torch.int32)
    out = IMPLS[impl][1](q, k_new, v_new, kv, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    ref = reference.extend_attention(q, k_new, v_new, kv.k, kv.v, qo_indptr, kv.indptr, kv.indices, prefix)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) < TOLERANCE[dtype]


# (lens, page_size, shares {b: (a, first n pages)}): prefixes shared through the radix cache,
# which the CPU path attends once per group of sequences.
SHARED_CASES = {
    "system_prompt": ([300, 310, 290, 500], 16, {1: (0, 18), 2: (0, 18), 3: (0, 18)}),
    "fork_at_two_depths": ([300, 310, 290, 40], 16, {1: (0, 18), 2: (0, 7)}),
    "two_groups": ([200, 210, 150, 160, 30], 16, {1: (0, 12), 3: (2, 9)}),
    "whole_pages_alike": ([64, 64, 63], 16, {1: (0, 4), 2: (0, 4)}),
    "page1": ([50, 70, 45], 1, {1: (0, 44), 2: (0, 44)}),
}


@pytest.mark.parametrize("consecutive", [False, True], ids=["scattered", "consecutive"])
@pytest.mark.parametrize("worth_it", [0, cpu.SHARED_TOKENS_WORTH_IT])
@pytest.mark.parametrize("case", SHARED_CASES)
def test_shared_prefixes(case, worth_it, consecutive, gen, monkeypatch):
    """Decode, and the decode rows of an extend batch, over page tables that share prefixes
    (on scattered pages, which are gathered, or consecutive ones, which are read in place)."""
    monkeypatch.setattr(cpu, "SHARED_TOKENS_WORTH_IT", worth_it)
    lens, page_size, shares = SHARED_CASES[case]
    kv = make_paged(gen, lens, page_size, 2, 64, torch.float32)
    if consecutive:
        for a in {a for a, _ in shares.values()}:
            kv = consecutive_pages(kv, a, max(n for source, n in shares.values() if source == a))
    kv = share_pages(kv, shares)
    q = torch.randn(len(lens), 6, 64, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out = cpu.decode_attention(q, kv, seq_lens, out=torch.full_like(q, float("nan")))
    assert rel_err(out, reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens)) < 1e-5

    prefix = seq_lens - 1
    k_new, v_new = (torch.randn(len(lens), 2, 64, generator=gen) for _ in range(2))
    qo_indptr = torch.arange(len(lens) + 1, dtype=torch.int32)
    out = cpu.extend_attention(q, k_new, v_new, kv, qo_indptr, prefix, out=torch.full_like(q, float("nan")))
    ref = reference.extend_attention(q, k_new, v_new, kv.k, kv.v, qo_indptr, kv.indptr, kv.indices, prefix)
    assert rel_err(out, ref) < 1e-5


def test_plan_attends_a_shared_prefix_once(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    lens = [300, 310, 290, 140]
    kv = share_pages(make_paged(gen, lens, 16, 2, 64, torch.float32), {1: (0, 18), 2: (0, 7), 3: (0, 7)})
    plan = cpu.plan_pool_reads(kv, [0, 1, 2, 3], lens)
    [shared] = plan.shared  # the deepest run all four share is 7 pages
    assert shared.seqs.tolist() == [0, 1, 2, 3] and shared.rows.shape == (2, 7 * 16)
    assert plan.tail_rows.shape == (4, 2, (20 - 7) * 16)
    assert (~plan.tail_hidden).sum(-1).flatten().tolist() == [n - 7 * 16 for n in lens]
    plan = cpu.plan_pool_reads(kv, [0, 1], [300, 310])
    assert plan.shared[0].rows.shape == (2, 18 * 16) and plan.shared[0].slots is None
    moved = share_pages(consecutive_pages(kv, 0, 18), {1: (0, 18)})  # onto pages end .. end + 17
    [shared] = cpu.plan_pool_reads(moved, [0, 1], [300, 310]).shared
    end = kv.k.shape[0]
    assert shared.rows is None and shared.slots == (end * 16, (end + 18) * 16)
    # a sequence's last page stays its own even when another sequence has it too
    assert cpu.plan_pool_reads(kv, [0, 1], [16 * 18, 16 * 18]).shared[0].rows.shape == (2, 17 * 16)
    monkeypatch.setattr(cpu, "SHARED_TOKENS_WORTH_IT", 18 * 16 + 1)  # sharing would save 288 tokens
    assert cpu.plan_pool_reads(kv, [0, 1], [300, 310]).shared == []


def test_plan_follows_the_page_table():
    """One plan serves every layer of a forward, and a new page table or new lengths replan."""
    gen = torch.Generator().manual_seed(0)
    lens = [300, 310]
    kv = share_pages(make_paged(gen, lens, 16, 2, 64, torch.float32), {1: (0, 18)})
    q = torch.randn(2, 4, 64, generator=gen)
    for seq_lens, table in [(lens, kv), ([299, 310], kv), ([299, 310], share_pages(kv, {1: (0, 1)}))]:
        seq_lens = torch.tensor(seq_lens, dtype=torch.int32)
        ref = reference.decode_attention(q, table.k, table.v, table.indptr, table.indices, seq_lens)
        for _ in range(2):
            assert rel_err(cpu.decode_attention(q, table, seq_lens), ref) < 1e-5
    kv.indices[20] = kv.indices[21]  # edited in place
    ref = reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens)
    assert rel_err(cpu.decode_attention(q, kv, seq_lens), ref) < 1e-5


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q_heads=5), "do not divide"),
        (dict(head_dim=44), "K head_dim must be a multiple of 8 from 16 to 576, got 44"),
        (dict(q_dtype=torch.float64), "float32, float16 or bfloat16"),
        (dict(pool_dtype=torch.float64), "a KV pool must be float32"),
        (dict(indptr_dtype=torch.int64), "int32"),
        (dict(fp8_without_scales=True), "an fp8 KV pool needs k_scale"),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_are_named(impl, change, message, gen):
    head_dim = change.get("head_dim", 64)
    pool_dtype = change.get("pool_dtype", torch.float32)
    k = torch.zeros(4, 16, 2, head_dim, dtype=pool_dtype)
    if change.get("fp8_without_scales"):
        k = k.to(torch.float8_e4m3fn)
    kv = PagedKV(
        k,
        k.clone(),
        torch.tensor([0, 1], dtype=change.get("indptr_dtype", torch.int32)),
        torch.tensor([2], dtype=torch.int32),
    )
    q = torch.zeros(1, change.get("q_heads", 4), head_dim, dtype=change.get("q_dtype", torch.float32))
    with pytest.raises(ValueError, match=message):
        IMPLS[impl][0](q, kv, torch.tensor([5], dtype=torch.int32))
