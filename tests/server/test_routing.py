"""Routing policies and the router's per-worker views, against a real worker-side cache."""

import numpy as np
import pytest

from radixrt.cache import PageAllocator, RadixCache
from radixrt.server.routing import CacheAware, RoundRobin, WorkerView
from radixrt.wire.protocol import WireCacheEvent

PAGE = 4


def tokens(*pieces: int, length: int = 8) -> np.ndarray:
    return np.concatenate([np.arange(p * 1000, p * 1000 + length, dtype=np.int32) for p in pieces])


def wire(events) -> list[WireCacheEvent]:
    return [WireCacheEvent(*e) for e in events]


def test_a_view_follows_the_worker_cache_through_its_events():
    allocator = PageAllocator(8)
    cache = RadixCache(PAGE, allocator)
    cache.events = []
    view = WorkerView(PAGE)
    a, b = tokens(1, 2), tokens(1, 3)
    for t in (a, b):
        cache.insert(t, allocator.alloc(len(t) // PAGE), "ns")
    cache.evict(2)  # a's tail: the least recently used leaf
    view.apply(wire(cache.events))
    for probe in (a, b, tokens(1), tokens(2)):
        assert view.match(probe, "ns") == cache.prefix_length(probe, "ns")
        assert view.match(probe, None) == 0  # namespaces stay apart
    assert view.match(a, "ns") == 8 and view.match(b, "ns") == 16


def test_in_flight_prompts_count_until_they_end():
    view = WorkerView(PAGE)
    first, second = view.add(tokens(1, 2), None), view.add(tokens(1, 3), None)
    assert view.load == 2 and view.match(tokens(1, 2, 4), None) == 16
    view.remove(first)
    assert view.match(tokens(1, 2), None) == 8  # the shared head is still held by the second
    view.remove(second)
    assert view.load == 0 and view.match(tokens(1, 2), None) == 0 and view.inflight.total_size() == 0


def test_cache_aware_takes_the_longest_match_then_the_least_loaded():
    views = {"w0": WorkerView(PAGE), "w1": WorkerView(PAGE)}
    policy = CacheAware(balance_abs=2, balance_rel=1.5)
    views["w1"].add(tokens(7, 8), None)
    views["w0"].add(tokens(5), None)
    views["w0"].add(tokens(6), None)
    assert policy.choose(views, tokens(7, 8, 9), None) == "w1"  # the longest match
    assert policy.choose(views, tokens(4), None) == "w1"  # no match anywhere: the least loaded
    views["w1"].add(tokens(7, 1), None)
    views["w1"].add(tokens(7, 2), None)
    views["w1"].add(tokens(7, 3), None)  # 4 against 2: a gap of 2 is not out of balance
    assert policy.choose(views, tokens(7, 8, 9), None) == "w1"
    views["w1"].add(tokens(7, 4), None)  # 5 against 2: out of balance, the least loaded wins
    assert policy.choose(views, tokens(7, 8, 9), None) == "w0"


def test_a_burst_sharing_a_new_prefix_spreads_evenly():
    """Eight sessions over one system prompt arrive together (as in the agent benchmark)."""
    views = {"w0": WorkerView(PAGE), "w1": WorkerView(PAGE)}
    policy = CacheAware()
    placed = []
    for s in range(8):
        prompt = tokens(1, 10 + s)
        name = policy.choose(views, prompt, None)
        views[name].add(prompt, None)
        placed.append(name)
    assert placed.count("w0") == placed.count("w1") == 4
    # each session's next turn follows its history
    for s, name in enumerate(placed):
        assert policy.choose(views, tokens(1, 10 + s, 99), None) == name


def test_round_robin_takes_turns():
    views = {"w0": WorkerView(PAGE), "w1": WorkerView(PAGE)}
    policy = RoundRobin()
    assert [policy.choose(views, tokens(1), None) for _ in range(4)] == ["w0", "w1", "w0", "w1"]


def test_a_view_knows_the_tier_of_each_prefix_and_values_lower_tiers_less():
    from radixrt.cache.tiers import LowerTiers
    from radixrt.server.routing import TIER_WORTH

    allocator = PageAllocator(4)
    cache = RadixCache(PAGE, allocator, LowerTiers(host_pages=4, disk_pages=16))
    cache.events = []
    view = WorkerView(PAGE)
    a, b, c = tokens(1, 2), tokens(3, 4), tokens(5, 6)  # 4 pages each: one fits the device at a time
    for t in (a, b, c):
        m = cache.match_prefix(t, "ns")
        cache.lock(m)
        if allocator.available() < 4:
            cache.evict(4 - allocator.available())
        cache.commit(t, allocator.alloc(4), 0, "ns")
        cache.unlock(m.last_node)
    view.apply(wire(cache.events))
    assert view.match(c, "ns") == 16  # on the device
    assert view.match(b, "ns") == pytest.approx(16 * TIER_WORTH[1])  # moved to the host
    assert view.match(a, "ns") == pytest.approx(16 * TIER_WORTH[2])  # on disk alone
    cache.events.clear()
    cache.match_prefix(a, "ns")  # loads a back, pushing c down
    view.apply(wire(cache.events))
    assert view.match(a, "ns") == 16 and view.match(c, "ns") == pytest.approx(16 * TIER_WORTH[1])
