"""Retention in the radix tree: a retained prefix is not dropped before its deadline (it may move
down a tier into free room), every match renews the deadline, and after it the prefix is an
ordinary one again. The clock is the test's."""

from __future__ import annotations

import numpy as np
import pytest

from radixrt.cache import PageAllocator, RadixCache
from radixrt.cache.node import Tier
from radixrt.cache.tiers import LowerTiers

PAGE = 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(device: int, host: int = 0, disk: int = 0) -> tuple[RadixCache, Clock]:
    tiers = LowerTiers(host, disk) if host or disk else None
    cache = RadixCache(PAGE, PageAllocator(device), tiers)
    cache.clock = Clock()
    return cache, cache.clock


def prompt(seed: int, pages: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, pages * PAGE).astype(np.int32)


def run(cache: RadixCache, tokens: np.ndarray, namespace=None) -> int:
    """Match, take pages for the rest (evicting), commit; the matched length."""
    m = cache.match_prefix(tokens, namespace)
    cache.lock(m)
    need = len(tokens) // PAGE - m.pages.size
    if cache.allocator.available() < need:
        cache.evict(need - cache.allocator.available())
    own = cache.allocator.alloc(need)
    if own is not None:
        cache.commit(tokens, np.concatenate([m.pages, own]), m.length, namespace)
    cache.unlock(m.last_node)
    return m.length


def test_a_retained_prefix_stays_on_a_full_device_until_its_deadline():
    cache, clock = make(device=8)
    kept = prompt(1, 4)
    run(cache, kept)
    assert cache.retain(kept, ttl=60) == 4 and cache.retained_pages() == 4
    for seed in range(2, 6):
        run(cache, prompt(seed, 4))  # only the other half of the pool turns over
    assert run(cache, kept) == len(kept)
    clock.now += 30
    run(cache, kept)  # a hit renews: 60 s from now
    clock.now += 45
    assert cache.retained_pages() == 4
    clock.now += 20  # past the deadline: an ordinary prefix again
    assert cache.retained_pages() == 0
    for seed in range(6, 10):
        run(cache, prompt(seed, 4))
    assert run(cache, kept) == 0


def test_a_retained_prefix_moves_down_into_room_and_never_out():
    cache, _ = make(device=4, host=4)
    kept = prompt(1, 4)
    run(cache, kept)
    cache.retain(kept, ttl=60)
    for seed in range(2, 8):
        run(cache, prompt(seed, 4))
    tiers = {n.tier for n in cache.nodes() if n.retain_until}
    assert tiers == {Tier.HOST}  # moved to the host once, and kept there
    assert run(cache, kept) == len(kept)


def test_retention_counts_per_namespace_and_only_what_is_cached():
    cache, _ = make(device=16)
    a = prompt(1, 4)
    run(cache, a, "a")
    assert cache.retain(a, 10, "b") == 0  # nothing of it is cached in b
    assert cache.retain(a[: 2 * PAGE], 10, "a") == 2
    assert cache.retained_pages("a") == 2 and cache.retained_pages("b") == 0
    with pytest.raises(ValueError, match="ttl"):
        cache.retain(a, 0, "a")
    cache.reset()
    assert cache.retained_pages() == 0
