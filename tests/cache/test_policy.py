"""Eviction policies: LRU is the default and keys by the tick; the adaptive policy ("ghost-promoted
LRU") keeps a shared prefix that LRU loses to one-off prompts, stays LRU where recency is all there
is, keeps its ghost list bounded, and leaves the tree's invariants (tiers included) intact. On the
Mooncake trace it reproduces the research harness's hit rates."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from test_tiering import check_tiers, run

from radixrt.cache import PageAllocator, RadixCache
from radixrt.cache.node import Tier
from radixrt.cache.policy import AdaptivePolicy
from radixrt.cache.tiers import LowerTiers

MOONCAKE = Path(__file__).parents[3] / "shared" / "traces" / "mooncake" / "conversation_trace.jsonl"


def replay(cache: RadixCache, stream: list[list[int]]) -> list[int]:
    """Each request's hit length, served as the engine's admission path does."""
    return [run(cache, tokens)[0].length for tokens in stream]


def test_lru_is_the_default_and_its_key_is_the_tick():
    cache = RadixCache(1, PageAllocator(8))
    assert cache.policy.name == "lru"
    run(cache, [1, 2, 3])
    run(cache, [1, 2, 4])
    assert [(n.prio, n.tick) for n in cache.nodes()] == [(n.tick, n.tick) for n in cache.nodes()]


def test_an_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="lru, adaptive"):
        RadixCache(1, PageAllocator(8), policy="lfu")
    with pytest.raises(ValueError, match="allocator"):
        RadixCache(1, policy="adaptive")


def test_the_adaptive_policy_is_sized_by_the_pages_the_tiers_hold():
    assert RadixCache(1, PageAllocator(100), policy="adaptive").policy.ghost_limit == 400
    tiered = RadixCache(1, PageAllocator(100), LowerTiers(300, 0), policy="adaptive")
    assert tiered.policy.ghost_limit == 1600
    assert RadixCache(1, PageAllocator(100), LowerTiers(0, 1000), policy="adaptive").policy.ghost_limit == 4000


def shared_prefix_stream(rounds: int) -> list[list[int]]:
    """Each round: a 10-page system prompt twice (with fresh questions), then 120 pages of one-off
    prompts, more than the 100-page cache: the prompt comes back after more than the capacity."""
    fresh = itertools.count(1000)
    unique = lambda n: [next(fresh) for _ in range(n)]  # noqa: E731
    system = list(range(10))
    stream = []
    for _ in range(rounds):
        stream += [system + unique(10), system + unique(10)]
        stream += [unique(30) for _ in range(4)]
    return stream


def test_the_adaptive_policy_keeps_a_shared_prefix_that_lru_loses_to_one_off_prompts():
    stream = shared_prefix_stream(rounds=5)
    lru = replay(RadixCache(1, PageAllocator(100)), stream)
    adaptive_cache = RadixCache(1, PageAllocator(100), policy="adaptive")
    adaptive = replay(adaptive_cache, stream)
    firsts = range(6, len(stream), 6)  # each round's first use of the system prompt
    assert [lru[i] for i in firsts] == [0, 0, 0, 0]  # evicted by the one-off prompts every time
    assert [adaptive[i] for i in firsts] == [0, 10, 10, 10]  # learnt from its first return
    assert adaptive_cache.policy.shift > 8  # above the ticks of a round's one-off prompts
    assert sum(adaptive) == sum(lru) + 30


def test_the_shift_stays_zero_where_recency_is_all_there_is():
    """Every prompt comes back once, right after it was evicted, and never again: the pages the
    ghost list sees again were used once (unpromoted), so the shift never moves and the adaptive
    policy hits exactly as LRU."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 10**6, 8).tolist() for _ in range(40)]
    stream = []
    for k, p in enumerate(prompts):
        stream.append(p)
        if k >= 3:
            stream.append(prompts[k - 3])
    cache = RadixCache(1, PageAllocator(20), policy="adaptive")
    hits = []
    for tokens in stream:
        hits.append(run(cache, tokens)[0].length)
        assert cache.policy.shift == 0
    assert hits == replay(RadixCache(1, PageAllocator(20)), stream)
    assert sum(hits) < 8 * (len(prompts) - 3)  # second uses found pages evicted: they came back from the ghost list
    assert cache.policy.evictions[0] > 0 and any(n.promoted for n in cache.nodes())


def random_stream(seed: int, n: int, page_size: int = 2) -> list[list[int]]:
    """Requests over a few shared prefixes and tails, so that prefixes collide, edges split and
    pages come back after their eviction."""
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(0, 1000, page_size * int(rng.integers(1, 4))).tolist() for _ in range(12)]
    return [
        [t for i in rng.integers(0, len(pieces), int(rng.integers(1, 6))) for t in pieces[i]]
        + rng.integers(0, 1000, int(rng.integers(0, 3 * page_size))).tolist()
        for _ in range(n)
    ]


def test_the_ghost_list_never_exceeds_its_bound():
    cache = RadixCache(2, PageAllocator(16), policy="adaptive")
    policy, sizes = cache.policy, []
    for tokens in random_stream(1, 400):
        run(cache, tokens)
        sizes.append(len(policy.ghost))
    assert max(sizes) == policy.ghost_limit == 64


def check_candidates(cache: RadixCache) -> None:
    """Every tier's leaves are filed, at keys no greater than their nodes' priorities (the lazy
    lists' invariant), and the device's page counts add up."""
    evictable = 0
    for node in cache.nodes():
        kids = node.children.values()
        if node.tier is Tier.DEVICE:
            evictable += node.pages.size if not node.lock_ref else 0
            if not node.lock_ref and not any(c.tier is Tier.DEVICE for c in kids):
                assert node.lru_entry is not None, f"{node} is a device leaf the policy does not see"
        if node.tier is Tier.HOST and not any(c.tier is Tier.HOST for c in kids):
            assert node.host_entry is not None
        if node.disk is not None and not any(c.disk is not None for c in kids):
            assert node.disk_entry is not None
        for entry in (node.lru_entry, node.host_entry, node.disk_entry):
            assert entry is None or (entry[2] is node and entry[0] <= node.prio)
        assert node.ids is not None and len(node.ids) == node.num_pages
    assert evictable == cache.evictable_size()
    assert cache.total_size() == cache.allocator.used()


@pytest.mark.parametrize("seed", range(6))
def test_tree_invariants_hold_under_a_random_stream_with_tiers(seed):
    """A policy whose shift swings both ways (every ghost hit counts) over a device, host and
    disk: priorities fall as well as rise. Each explicit eviction takes the device leaf with the
    smallest priority."""
    rng = np.random.default_rng(seed)
    policy = AdaptivePolicy(24, window=1.0, up=3.0, down=3.0)
    cache = RadixCache(2, PageAllocator(12), LowerTiers(8, 20), policy=policy)
    shifts = set()
    for tokens in random_stream(seed, 250):
        run(cache, tokens, namespace=[None, "b"][int(rng.integers(0, 2))])
        shifts.add(policy.shift)
        if rng.random() < 0.3:
            leaves = [
                n
                for n in cache.nodes()
                if n.tier is Tier.DEVICE
                and not n.lock_ref
                and not any(c.tier is Tier.DEVICE for c in n.children.values())
            ]
            holder = {int(p): n for n in leaves for p in n.pages}
            before = set(holder)
            if cache.evict(1):
                (gone,) = before - {int(p) for n in cache.nodes() if n.tier is Tier.DEVICE for p in n.pages}
                assert holder[gone].prio == min(n.prio for n in leaves)
        check_tiers(cache)
        check_candidates(cache)
    assert len(shifts) > 3 and 0 in shifts


@pytest.mark.skipif(not MOONCAKE.exists(), reason="the Mooncake trace is not in shared/traces")
def test_mooncake_hit_rates_match_the_research_harness():
    from radixrt.replay.cache_sim import simulate
    from radixrt.replay.importers import load
    from radixrt.replay.trace import prompt_tokens

    prompts = [prompt_tokens(r) for r in sorted(load(MOONCAKE).requests, key=lambda r: r.arrival)]
    assert round(simulate(prompts, 512, 1000, policy="adaptive").hit_rate, 4) == 0.0778
    assert round(simulate(prompts, 512, 4000, policy="adaptive").hit_rate, 4) == 0.1497
    assert round(simulate(prompts, 512, 1000).hit_rate, 4) == 0.0445  # LRU, as shared/traces/README says
