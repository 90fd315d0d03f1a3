from pathlib import Path

import numpy as np
import pytest

from radixrt.replay.cache_sim import simulate
from radixrt.replay.mooncake import BLOCK_SIZE, block_tokens, load_mooncake

MOONCAKE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "mooncake" / "conversation_trace.jsonl"
# Block hit rates published with the trace (shared/traces/README.md): requests one at a time in
# file order, outputs not cached, least recently used blocks evicted first, as many as needed.
MOONCAKE_REFERENCE = {1000: 0.0445, 4000: 0.0865, 16000: 0.2627, 64000: 0.3593, None: 0.3664}


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


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the Mooncake trace is not in ../shared/traces")
@pytest.mark.parametrize("capacity_blocks", list(MOONCAKE_REFERENCE))
def test_mooncake_hit_rates_match_the_published_figures(capacity_blocks):
    trace = load_mooncake(MOONCAKE)
    pages = capacity_blocks or sum(len(q.hash_ids) for q in trace)
    r = simulate((block_tokens(q.hash_ids) for q in trace), BLOCK_SIZE, pages)
    assert abs(r.hit_rate - MOONCAKE_REFERENCE[capacity_blocks]) <= 0.002
