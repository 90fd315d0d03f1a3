"""Decode graphs (engine/cuda_graph.py): buckets, padding, the static-buffer forward against the
eager one, what the pad sequences write, and (on a GPU) captured replays against eager logits."""

import os

import numpy as np
import pytest
import torch

from radixrt.cache import KVPool
from radixrt.engine.cuda_graph import DecodeGraphs, buckets_for, estimate_bytes
from radixrt.kernels import attention
from radixrt.model import SequenceChunk, build_batch, load_model
from testkit.engines import TINY_VOCAB, tiny_llama

PAGE_SIZE, PAD_PAGE, NUM_PAGES, SEQS = 4, 0, 64, 9
PROMPT_LENS = [5, 14, 1, 8, 11, 3, 12, 7, 4]  # sequence 3 is shifted by SHIFT (a slid window's)
SHIFT = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The engine tests' tiny Llama with weights 5x the default init: sharp attention, so that a
    wrong page or position moves the logits well past the tolerance."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-graphs"), initializer_range=0.1)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint).model


@pytest.fixture(scope="module")
def prefilled(model):
    """A KV pool holding SEQS prompts (one eager extend), the decode chunk of each, and a snapshot
    of the pool to restore between runs. Page PAD_PAGE belongs to no sequence."""
    pool = KVPool(
        **model.kv_shape,
        page_size=PAGE_SIZE,
        dtype=torch.float32,
        num_pages=NUM_PAGES,
    )
    rng = np.random.default_rng(0)
    prompts, decodes, next_page = [], [], PAD_PAGE + 1
    for i, n in enumerate(PROMPT_LENS):
        pages = np.arange(next_page, next_page + -(-(n + 1) // PAGE_SIZE), dtype=np.int32)
        next_page += len(pages)
        shift = SHIFT if i == 3 else 0
        prompts.append(SequenceChunk(rng.integers(0, TINY_VOCAB, n), 0, pages, shift=shift))
        decodes.append(SequenceChunk(rng.integers(0, TINY_VOCAB, 1), n, pages, shift=shift))
    with torch.no_grad():
        model(build_batch(prompts, PAGE_SIZE), pool)
    return pool, decodes, (pool.k.clone(), pool.v.clone())


def restore(pool, snapshot):
    pool.k.copy_(snapshot[0])
    pool.v.copy_(snapshot[1])


def graphs_for(model, pool, max_bs=16, capture=False):
    return DecodeGraphs(model, pool, max_bs=max_bs, max_context=model.max_context, pad_page=PAD_PAGE, capture=capture)


def eager(model, pool, chunks):
    with torch.no_grad():
        return model(build_batch(chunks, PAGE_SIZE, pool.k.device), pool)


def test_buckets():
    assert buckets_for(100) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112]
    assert buckets_for(16) == [1, 2, 4, 8, 16]
    assert buckets_for(5) == [1, 2, 4, 8]  # max_bs rounds up to its bucket
    assert buckets_for(1) == [1]
    assert buckets_for(64)[-1] == 64 and buckets_for(65)[-1] == 80
    with pytest.raises(ValueError, match="max_bs"):
        buckets_for(0)


def test_bucket_lookup_and_can_run(model, prefilled):
    pool, decodes, _ = prefilled
    graphs = graphs_for(model, pool, max_bs=16)
    assert graphs.max_bs == 16
    assert [graphs.bucket(n) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert graphs.bucket(17) is None and graphs.bucket(0) is None
    assert graphs.can_run(decodes[:1]) and graphs.can_run(decodes)
    assert not graphs.can_run([])
    assert not graphs.can_run([decodes[0]] * 17)  # past max_bs
    two = SequenceChunk(np.array([1, 2]), 5, decodes[0].pages)
    assert not graphs.can_run([decodes[1], two])  # a chunk of two tokens
    long = SequenceChunk(np.array([1]), model.max_context, decodes[0].pages)
    assert not graphs.can_run([long])  # past max_context
    padded = graphs.pad(decodes[:3])
    assert len(padded) == 4 and all(p is c for p, c in zip(padded, decodes[:3]))
    pad = padded[3]
    assert pad.tokens.tolist() == [0] and pad.prefix_len == 0 and pad.pages.tolist() == [PAD_PAGE] and pad.shift == 0


def test_capture_needs_cuda(model, prefilled):
    with pytest.raises(ValueError, match="CUDA"):
        graphs_for(model, prefilled[0], capture=True)
    with pytest.raises(ValueError, match="pad_page"):
        DecodeGraphs(model, prefilled[0], max_bs=4, max_context=64, pad_page=NUM_PAGES, capture=False)


def test_static_path_matches_eager(model, prefilled):
    """Largest first, so later (smaller) batches run over page tables holding stale entries."""
    pool, decodes, snapshot = prefilled
    graphs = graphs_for(model, pool)
    assert graphs.memory_bytes == 0 and not graphs.graphs
    for bs in (9, 3, 8, 1, 2):
        chunks = decodes[:bs] if bs != 2 else decodes[2:4]  # the shifted sequence in a batch of its own
        assert graphs.can_run(chunks)
        restore(pool, snapshot)
        got = graphs.run(build_batch(graphs.pad(chunks), PAGE_SIZE))
        assert got.shape == (graphs.bucket(bs), TINY_VOCAB)
        got = got[:bs].clone()
        restore(pool, snapshot)
        want = eager(model, pool, chunks)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    restore(pool, snapshot)


def test_run_refuses_an_unpadded_batch(model, prefilled):
    pool, decodes, snapshot = prefilled
    graphs = graphs_for(model, pool)
    with pytest.raises(ValueError, match="no bucket"):
        graphs.run(build_batch(decodes[:3], PAGE_SIZE))


def test_pad_tokens_write_only_the_pad_page(model, prefilled):
    pool, decodes, snapshot = prefilled
    graphs = graphs_for(model, pool)
    restore(pool, snapshot)
    chunks = decodes[:5]  # bucket 8: three pad sequences
    batch = build_batch(graphs.pad(chunks), PAGE_SIZE)
    graphs.run(batch)
    changed = set()
    for now, before in ((pool.k, snapshot[0]), (pool.v, snapshot[1])):
        differ = (now != before).flatten(3).any(-1).any(0).flatten()  # per slot, any layer, any head
        changed |= set(torch.nonzero(differ).flatten().tolist())
    real = {int(c.pages[c.prefix_len // PAGE_SIZE]) * PAGE_SIZE + c.prefix_len % PAGE_SIZE for c in chunks}
    assert changed == real | {PAD_PAGE * PAGE_SIZE}
    restore(pool, snapshot)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton kernels take CPU tensors in the interpreter only"
)
def test_static_path_reads_nothing_to_the_host(model, prefilled, monkeypatch):
    """Through the Triton kernels (interpreted), the whole decode forward on the static buffers
    reads no tensor value on the host: what capture forbids."""
    pool, decodes, snapshot = prefilled
    graphs = graphs_for(model, pool)
    chunks = decodes[:3]
    batch = build_batch(graphs.pad(chunks), PAGE_SIZE)
    restore(pool, snapshot)
    want = eager(model, pool, chunks)
    restore(pool, snapshot)

    def synced(*args, **kwargs):
        raise AssertionError("a device-to-host sync")

    with monkeypatch.context() as patched:
        patched.setattr(attention, "ATTENTION", "triton")
        for name in ("item", "tolist", "__int__", "__bool__", "__index__", "nonzero"):
            patched.setattr(torch.Tensor, name, synced)
        got = graphs.run(batch)[:3].clone()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    restore(pool, snapshot)


def test_estimate_grows_with_batch(model):
    cfg, arch = model.config, model.arch
    sizes = [estimate_bytes(arch, bs, torch.float32) for bs in (1, 8, 64, 256)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert sizes[-1] - sizes[0] > 256 * cfg.vocab_size * 4  # at least the float32 logits
    assert estimate_bytes(arch, 8, torch.float32) > estimate_bytes(arch, 8, torch.bfloat16)
    assert estimate_bytes(arch, 8, torch.float32, max_context=4096, page_size=1) > estimate_bytes(
        arch, 8, torch.float32, max_context=4096, page_size=16
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="capturing CUDA graphs needs a GPU")
def test_captured_replay_matches_eager(checkpoint, prefilled):
    """On a GPU: the captured graphs, replayed at several batch sizes (largest first, then smaller
    ones over stale page-table entries, the shifted sequence among them), against the eager
    forward of the same chunks on the same prompts' K/V."""
    cpu_pool, decodes, snapshot = prefilled
    model = load_model(checkpoint, device="cuda").model
    pool = KVPool(
        num_layers=cpu_pool.num_layers,
        kv_heads=cpu_pool.kv_heads,
        head_dim=cpu_pool.head_dim,
        page_size=PAGE_SIZE,
        dtype=torch.float32,
        device="cuda",
        num_pages=NUM_PAGES,
    )
    snapshot = tuple(t.cuda() for t in snapshot)
    restore(pool, snapshot)
    graphs = graphs_for(model, pool, capture=True)
    assert set(graphs.graphs) == set(graphs.buckets) and graphs.memory_bytes > 0
    # warm-up and capture wrote the pad page alone
    assert torch.equal(pool.k[:, PAD_PAGE + 1 :], snapshot[0][:, PAD_PAGE + 1 :])
    for bs in (9, 3, 8, 1, 2):
        chunks = decodes[:bs] if bs != 2 else decodes[2:4]
        restore(pool, snapshot)
        got = graphs.run(build_batch(graphs.pad(chunks), PAGE_SIZE, "cuda"))[:bs].clone()
        restore(pool, snapshot)
        want = eager(model, pool, chunks)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
