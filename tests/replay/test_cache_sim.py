from pathlib import Path

import numpy as np
import pytest

from radixrt.replay.cache_sim import simulate
from radixrt.replay.mooncake import BLOCK_SIZE, block_tokens, load_mooncake

SAMPLE = Path(__file__).with_name("data") / "mooncake_head300.jsonl"  # the first 300 requests of the Mooncake trace


def test_shared_prefix_is_computed_once():
    rng = np.random.default_rng(0)
    system = rng.integers(0, 1000, 64, dtype=np.int32)
    prompts = [np.r_[system, rng.integers(0, 1000, 16, dtype=np.int32)] for _ in range(5)]
    r = simulate(prompts, page_size=16, capacity_pages=100)
    assert r.requests == 5 and r.tokens == 5 * 80 and r.hit_tokens == 4 * 64 and r.evict_calls == 0


def test_a_full_pool_evicts_exactly_what_is_needed():
    prompts = [np.arange(i * 100, i * 100 + 40, dtype=np.int32) for i in range(3)]
    r = simulate(prompts, page_size=1, capacity_pages=100)
    assert r.evict_calls == 1 and r.evicted_pages == 20 and r.hit_tokens == 0


def test_a_prompt_larger_than_the_pool_is_served_uncached():
    r = simulate([np.arange(50, dtype=np.int32)] * 2, page_size=1, capacity_pages=10)
    assert r.uncacheable == 2 and r.hit_tokens == 0


def naive_block_hits(trace) -> tuple[int, int]:
    """Blocks reused with an unlimited cache: each request's longest run of leading blocks that
    an earlier request began with."""
    seen, hits, total = set(), 0, 0
    for q in trace:
        prefixes = [tuple(q.hash_ids[: i + 1]) for i in range(len(q.hash_ids))]
        hits += next((i for i, p in enumerate(prefixes) if p not in seen), len(prefixes))
        total += len(prefixes)
        seen.update(prefixes)
    return hits, total


@pytest.mark.parametrize("page_size", [BLOCK_SIZE, 64])
def test_a_mooncake_sample_matches_a_naive_count(page_size):
    """The importer and the simulator on the trace's first 300 requests (the whole trace's
    published figures are checked by bench/bench_radix.py)."""
    trace = load_mooncake(SAMPLE)
    assert len(trace) == 300 and trace[0].hash_ids[0] == 0
    hits, total = naive_block_hits(trace)
    r = simulate((block_tokens(q.hash_ids) for q in trace), page_size, capacity_pages=10**7)
    assert 0.05 < hits / total < 0.9 and r.hit_tokens == hits * BLOCK_SIZE and r.tokens == total * BLOCK_SIZE
    small = simulate((block_tokens(q.hash_ids) for q in trace), BLOCK_SIZE, capacity_pages=200)
    assert small.evict_calls > 0 and small.hit_tokens < r.hit_tokens
