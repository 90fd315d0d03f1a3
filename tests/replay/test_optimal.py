import gc
from functools import cache
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from radixrt.replay import cache_sim
from radixrt.replay.cache_sim import CacheReplay, simulate
from radixrt.replay.mooncake import BLOCK_SIZE, block_tokens, load_mooncake
from radixrt.replay.optimal import simulate_optimal

SAMPLE = Path(__file__).with_name("data") / "mooncake_head300.jsonl"  # the first 300 requests of the Mooncake trace


def ids(*tokens: int) -> np.ndarray:
    return np.array(tokens, dtype=np.int32)


def test_belady_keeps_what_lru_drops():
    # page_size 2, 3 pages. S = [0, 0] is a shared system page; X, Y, Z are one-page tails.
    # Requests: SX SY SZ SX SY SX (4 tokens each, 24 in all).
    # LRU:  SX misses both pages; SY and SZ hit S (2 each), SZ evicts SX (least recent leaf);
    #       SX hits S and evicts SY; SY hits S and evicts SZ; SX hits both (4): 0+2+2+2+2+4 = 12.
    # Belady: after SZ the pool holds S, SX, SY, SZ; SZ is never needed again, so it goes at once;
    #       SX, SY, SX then hit both pages (4 each): 0+2+2+4+4+4 = 16.
    s, x, y, z = (0, 0), (1, 1), (2, 2), (3, 3)
    prompts = [ids(*s, *t) for t in (x, y, z, x, y, x)]
    lru = simulate(prompts, page_size=2, capacity_pages=3)
    opt = simulate_optimal(prompts, page_size=2, capacity_pages=3)
    assert isinstance(opt, CacheReplay)
    assert lru.tokens == opt.tokens == 24
    assert lru.hit_tokens == 12 and lru.evicted_pages == 3
    assert opt.hit_tokens == 16 and opt.evicted_pages == 1 and opt.evict_calls == 1 and opt.peak_pages == 3


def test_classic_belady_on_single_pages():
    # page_size 1, 2 pages, one-token prompts A B C A B A. LRU evicts A for C, B for A, C for B:
    # only the last A hits. Belady drops C (never needed again) right after it is computed, so
    # A, B, A all hit.
    prompts = [ids(t) for t in (1, 2, 3, 1, 2, 1)]
    assert simulate(prompts, page_size=1, capacity_pages=2).hit_tokens == 1
    assert simulate_optimal(prompts, page_size=1, capacity_pages=2).hit_tokens == 3


def test_only_whole_pages_count_and_oversized_requests_are_not_cached():
    prompts = [ids(5, 6, 7), ids(1, 2, 3, 4, 9), ids(5, 6, 9)]  # page_size 2: the last odd token never counts
    opt = simulate_optimal(prompts, page_size=2, capacity_pages=1)
    lru = simulate(prompts, page_size=2, capacity_pages=1)
    assert opt.tokens == lru.tokens == 2 + 4 + 2
    # the second prompt (2 pages) does not fit the 1-page pool: served, not cached. LRU evicts
    # [5 6] trying to make room for it; the optimum keeps it for the third prompt.
    assert opt.uncacheable == lru.uncacheable == 1
    assert opt.hit_tokens == 2 and lru.hit_tokens == 0 and opt.evicted_pages == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity_pages"):
        simulate_optimal([ids(1)], page_size=1, capacity_pages=0)
    with pytest.raises(ValueError, match="page_size"):
        simulate_optimal([ids(1)], page_size=0, capacity_pages=1)
    assert simulate_optimal([], page_size=4, capacity_pages=1).requests == 0


def trie_reuse(prompts, page_size: int) -> int:
    """Hit tokens with nothing ever evicted: each prompt's longest run of leading pages that some
    earlier prompt began with."""
    seen, hits = set(), 0
    for p in prompts:
        pages = [tuple(p[: (k + 1) * page_size].tolist()) for k in range(len(p) // page_size)]
        hits += next((k for k, q in enumerate(pages) if q not in seen), len(pages)) * page_size
        seen.update(pages)
    return hits


def test_unlimited_capacity_is_the_trie_reuse():
    rng = np.random.default_rng(1)
    heads = [rng.integers(0, 50, n, dtype=np.int32) for n in (8, 13, 30)]
    prompts = [
        np.r_[heads[rng.integers(3)], rng.integers(0, 3, rng.integers(0, 12), dtype=np.int32)] for _ in range(200)
    ]
    for page_size in (1, 3, 8):
        total = sum(len(p) // page_size for p in prompts)
        opt = simulate_optimal(prompts, page_size, None)
        assert opt.hit_tokens == simulate(prompts, page_size, total).hit_tokens == trie_reuse(prompts, page_size)
        assert opt.evicted_pages == 0 and opt.uncacheable == 0


def test_a_mooncake_sample_bounds_lru():
    trace = load_mooncake(SAMPLE)
    prompts = [block_tokens(q.hash_ids) for q in trace]
    total = sum(len(q.hash_ids) for q in trace)
    unlimited = simulate_optimal(prompts, BLOCK_SIZE, None)
    assert unlimited.hit_tokens == simulate(prompts, BLOCK_SIZE, total).hit_tokens
    for cap in (50, 200, 1000):
        lru, opt = simulate(prompts, BLOCK_SIZE, cap), simulate_optimal(prompts, BLOCK_SIZE, cap)
        assert lru.hit_tokens <= opt.hit_tokens <= unlimited.hit_tokens and opt.peak_pages <= cap
    assert simulate_optimal(prompts, BLOCK_SIZE, 200).hit_tokens > simulate(prompts, BLOCK_SIZE, 200).hit_tokens


@st.composite
def traces(draw, max_requests: int = 30):
    """Prompts that start with one of a few shared prefixes and go on with a random tail."""
    vocab = draw(st.integers(2, 5))
    tokens = st.integers(0, vocab - 1)
    heads = draw(st.lists(st.lists(tokens, max_size=10), min_size=1, max_size=4))
    n = draw(st.integers(1, max_requests))
    return [ids(*draw(st.sampled_from(heads)), *draw(st.lists(tokens, max_size=8))) for _ in range(n)]


def quick_lru(prompts, page_size: int, capacity: int) -> CacheReplay:
    """``simulate`` without its full garbage collection before timing (a tenth of a second a
    call, which would be most of this file's run time)."""
    with mock.patch.object(cache_sim, "gc", SimpleNamespace(collect=lambda: 0, disable=gc.disable, enable=gc.enable)):
        return simulate(prompts, page_size, capacity)


def naive_belady(prompts, page_size: int, capacity: int) -> int:
    """Belady's rule the slow way, on prefixes as token tuples: after each request that fits,
    cache its pages, then drop the leaf needed furthest ahead (found by scanning the requests
    still to come) until the pool fits. Returns the hit tokens."""
    paths = [[tuple(p[: (k + 1) * page_size].tolist()) for k in range(len(p) // page_size)] for p in prompts]
    cache, hits = set(), 0
    for j, path in enumerate(paths):
        hits += next((k for k, q in enumerate(path) if q not in cache), len(path)) * page_size
        if len(path) > capacity:
            continue
        cache.update(path)
        while len(cache) > capacity:
            leaves = cache - {q[:-page_size] for q in cache}
            cache.remove(
                max(
                    leaves,
                    key=lambda q: (next((i for i in range(j + 1, len(paths)) if q in paths[i]), len(paths)), len(q)),
                )
            )
    return hits


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(prompts=traces(), page_size=st.integers(1, 4), capacity=st.integers(1, 20))
def test_the_optimum_bounds_lru_and_stays_within_the_pool(prompts, page_size, capacity):
    lru = quick_lru(prompts, page_size, capacity)
    opt = simulate_optimal(prompts, page_size, capacity)
    assert opt.hit_tokens == naive_belady(prompts, page_size, capacity)
    unlimited = simulate_optimal(prompts, page_size, None)
    assert lru.hit_tokens <= opt.hit_tokens <= unlimited.hit_tokens
    assert opt.peak_pages <= capacity
    assert (opt.requests, opt.tokens, opt.uncacheable) == (lru.requests, lru.tokens, lru.uncacheable)


def best_by_search(prompts, capacity: int) -> int:
    """The most hit tokens of any sequence of caches (page_size 1): after each request the cache
    may become any prefix-closed set of at most ``capacity`` pages drawn from the pages it held and
    the request's own (only from those it held when the request is larger than the pool). This is
    every way of evicting leaves after inserting, down to the capacity or further."""
    paths = [[tuple(p[: k + 1].tolist()) for k in range(len(p))] for p in prompts]

    def closed(pages) -> bool:
        return all(len(q) == 1 or q[:-1] in pages for q in pages)

    @cache
    def best(j: int, cache: frozenset) -> int:
        if j == len(paths):
            return 0
        path = paths[j]
        hit = next((k for k, q in enumerate(path) if q not in cache), len(path))
        pool = sorted(cache | set(path) if len(path) <= capacity else cache)
        options = (frozenset(c) for size in range(min(capacity, len(pool)) + 1) for c in combinations(pool, size))
        return hit + max(best(j + 1, c) for c in options if closed(c))

    return best(0, frozenset())


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    prompts=st.lists(st.lists(st.integers(0, 1), max_size=4).map(lambda t: ids(*t)), min_size=1, max_size=5),
    capacity=st.integers(1, 3),
)
# [0 1] is too large for the pool: served, not cached, it is [0]'s last use, so [0] must go for [1]
@example(prompts=[ids(0), ids(0, 1), ids(1), ids(1)], capacity=1)
def test_belady_matches_an_exhaustive_search(prompts, capacity):
    assert simulate_optimal(prompts, 1, capacity).hit_tokens == best_by_search(prompts, capacity)
