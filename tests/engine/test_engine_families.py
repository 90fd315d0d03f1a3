"""Every model family through the whole engine: greedy tokens equal transformers' ``generate``
with prompts sharing prefixes through the radix cache, and still equal when a small device pool
forces retraction and a host tier takes what the device evicts (MLA's latent pages, MoE layers and
Gemma's windowed layers move and share like any other)."""

import numpy as np
import pytest
import torch

from radixrt import Engine, SamplingParams
from testkit.engines import check_pages, run_to_end
from testkit.families import CONFIGS, VOCAB, build

PAGE, STEPS = 4, 6
GREEDY = SamplingParams(max_new_tokens=STEPS, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request, tmp_path_factory):
    """The checkpoint, and four prompts sharing a 24-token trunk, with transformers' greedy tokens."""
    path = tmp_path_factory.mktemp(request.param)
    hf = build(request.param, path)
    g = torch.Generator().manual_seed(11)
    trunk = torch.randint(0, VOCAB, (24,), generator=g).tolist()
    batch = [trunk + torch.randint(0, VOCAB, (18,), generator=g).tolist() for _ in range(4)]
    with torch.no_grad():
        expected = [
            hf.generate(torch.tensor([p]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0)[
                0, len(p) :
            ].tolist()
            for p in batch
        ]
    return str(path), batch, expected


def test_prefix_sharing_matches_generate(family):
    path, batch, expected = family
    engine = Engine(path, page_size=PAGE, kv_cache_bytes=1 << 22)
    assert [engine.generate(p, GREEDY).token_ids for p in batch] == expected
    assert engine.stats()["cached_tokens"] >= 3 * 24
    check_pages(engine)


def test_retraction_and_a_host_tier_keep_the_tokens(family):
    """All four at once on a device pool of 16 pages (each request needs 12): requests are retracted
    and resumed; the trunk's pages go to the host and come back for the second round."""
    path, batch, expected = family
    probe = Engine(path, page_size=PAGE, kv_cache_bytes=1 << 20)
    engine = Engine(path, page_size=PAGE, kv_cache_bytes=16 * probe.pool.bytes_per_page, host_cache_bytes=1 << 22)
    for _ in range(2):
        ids = [engine.add_request(p, GREEDY) for p in batch]
        outputs = run_to_end(engine)
        assert [[t for out in outputs[i] for t in out.token_ids] for i in ids] == expected
    stats = engine.stats()
    assert stats["retractions"] > 0 and stats["host_hit_tokens"] > 0
    check_pages(engine)


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_quantized_pages(family, kv_dtype):
    """A quantized pool (MLA's latent rows quantized per token, V read with K's scales): a prompt's
    first token is computed from its own unquantized K/V, so it equals transformers'; the rest
    decode through the quantized pages (no reference to equal), and the pool is about 4x smaller."""
    path, batch, expected = family
    full = Engine(path, page_size=PAGE, kv_cache_bytes=1 << 22)
    engine = Engine(path, page_size=PAGE, kv_cache_bytes=1 << 22, kv_dtype=kv_dtype)
    assert engine.pool.bytes_per_token * 3 < full.pool.bytes_per_token
    outputs = [engine.generate(p, GREEDY).token_ids for p in batch]
    assert [out[0] for out in outputs] == [e[0] for e in expected]
    assert all(len(out) == STEPS for out in outputs)
    check_pages(engine)


def test_overlap_and_the_decode_graphs_static_path(family):
    """Overlapped scheduling with decode batches through the CUDA graphs' static buffers (run
    eagerly here, as on a CPU): the same tokens, with all four requests running at once."""
    path, batch, expected = family
    engine = Engine(path, page_size=PAGE, kv_cache_bytes=1 << 22, overlap=True)
    engine.use_decode_graphs(8, capture=False)
    graphs, runs = engine.runner.graphs, []
    replay = graphs.run
    graphs.run = lambda batch: runs.append(batch) or replay(batch)
    ids = [engine.add_request(p, GREEDY) for p in batch]
    outputs = run_to_end(engine)
    assert [[t for out in outputs[i] for t in out.token_ids] for i in ids] == expected
    assert len(runs) >= STEPS - 1
    engine.allocator.free(np.array([graphs.pad_page]))  # the padding's page, for check_pages
    check_pages(engine)
