"""Cache events and ``forget``: a mirror tree that applies a cache's events holds what it holds.

A router keeps, per worker, a ``RadixCache`` without an allocator and applies the worker cache's
``CacheEvent``s to it: ``stored`` ones with ``insert`` (placeholder page ids), the others with
``forget``. The state machine below drives a real cache (real allocator, locked requests,
eviction under allocation pressure, partial trims, cascades, namespaces, ``forget`` and ``reset``
on the cache itself) and after every step applies the drained events to a mirror, which must then
hold exactly the same cached paths. The mirror's edges are cut differently (matches split edges
only in the real tree), so this also checks that ``forget`` does not depend on where nodes split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from radixrt.cache import CacheEvent, MatchResult, PageAllocator, RadixCache
from testkit.caches import make, put, token_streams

NAMESPACES = (None, "tenant-b")


def ids(tokens) -> bytes:
    """Token ids as an event carries them: raw int32 bytes."""
    return np.asarray(tokens, dtype=np.int32).tobytes()


def apply_event(mirror: RadixCache, event: CacheEvent) -> int:
    """What the router does with one event; returns insert's or forget's result."""
    tokens = np.frombuffer(event.tokens, dtype=np.int32)
    if event.stored:
        return mirror.insert(tokens, np.zeros(tokens.size // mirror.page_size, dtype=np.int32), event.namespace)
    return mirror.forget(tokens, event.start, event.namespace)


def path_bytes(node) -> tuple[Hashable, bytes]:
    """(namespace, the tokens from the root to the end of ``node`` as raw int32 bytes)."""
    parts = []
    while not node.is_root:
        parts.append(node.key)
        node = node.parent
    return node.namespace, b"".join(reversed(parts))


def leaf_paths(cache: RadixCache) -> set[tuple[Hashable, bytes]]:
    """Every cached path that nothing extends: together they give every cached page prefix."""
    return {path_bytes(node) for node in cache.nodes() if not node.children}


def page_prefixes(cache: RadixCache) -> dict[tuple[Hashable, bytes], tuple[Hashable, bytes, int]]:
    """Every cached page prefix (namespace, bytes) -> the lock count of the node holding its last
    page; a page-level view that does not depend on where edges are split."""
    out = {}
    page_bytes = cache.page_size * 4
    for node in cache.nodes():
        ns, path = path_bytes(node)
        start = len(path) - len(node.key)
        for end in range(start + page_bytes, len(path) + 1, page_bytes):
            out[ns, path[:end]] = node.lock_ref
    return out


# ---- the documented events ---------------------------------------------------------------


def test_no_events_unless_asked_for():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3])
    cache.evict(1)
    cache.forget([1, 2], 0)
    assert cache.events is None


def test_events_are_as_documented():
    cache, allocator = make(page_size=2)
    cache.events = []
    put(cache, allocator, [1, 2, 3, 4, 5])  # a partial last page is not cached
    assert cache.events == [CacheEvent(True, None, ids([1, 2, 3, 4]), 0)]
    cache.events.clear()
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 8])  # extends it: the whole key, and where the new part begins
    assert cache.events == [CacheEvent(True, None, ids([1, 2, 3, 4, 5, 6, 7, 8]), 4)]
    cache.events.clear()
    put(cache, allocator, [1, 2, 3, 4, 5, 6])  # cached already: nothing new
    cache.match_prefix([1, 2, 3, 4, 5, 6, 9, 9])  # splits an edge: the cached set is the same
    assert cache.events == []
    assert cache.evict(1) == 1  # the leaf [7, 8]: the path to its end, from where it begins
    assert cache.events == [CacheEvent(False, None, ids([1, 2, 3, 4, 5, 6, 7, 8]), 6)]
    cache.events.clear()
    assert cache.evict(2) == 2  # [5, 6] is a leaf now and goes whole; then [1, 2, 3, 4] loses its tail page
    assert cache.events == [
        CacheEvent(False, None, ids([1, 2, 3, 4, 5, 6]), 4),
        CacheEvent(False, None, ids([1, 2, 3, 4]), 2),
    ]
    cache.events.clear()
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 8], namespace="t")  # another namespace shares nothing
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 8])  # re-inserting an evicted path
    assert cache.events == [
        CacheEvent(True, "t", ids([1, 2, 3, 4, 5, 6, 7, 8]), 0),
        CacheEvent(True, None, ids([1, 2, 3, 4, 5, 6, 7, 8]), 2),
    ]
    cache.events.clear()
    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 8])
    cache.lock(m)
    assert cache.evict(3) == 3  # only namespace "t" can go: one leaf trimmed from the middle, then removed
    cache.unlock(m.last_node)
    assert cache.events == [CacheEvent(False, "t", ids([1, 2, 3, 4, 5, 6, 7, 8]), 2)]
    cache.events.clear()
    assert cache.forget([1, 2, 3], 0, "t") == 1  # forget records what it drops, too
    assert cache.events == [CacheEvent(False, "t", ids([1, 2]), 0)]
    assert cache.namespaces() == [None]


def test_a_mirror_applying_the_documented_events_matches():
    cache, allocator = make(page_size=2)
    cache.events = []
    mirror = RadixCache(page_size=2)
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 8])
    cache.match_prefix([1, 2, 3, 9])  # a split the mirror never sees
    put(cache, allocator, [1, 2, 3, 4, 7, 7], namespace="t")
    cache.evict(3)
    assert [apply_event(mirror, e) for e in cache.events] == [0, 0, 3]  # inserts return cached tokens, forget pages
    assert leaf_paths(mirror) == leaf_paths(cache) == {(None, ids([1, 2])), ("t", ids([1, 2, 3, 4, 7, 7]))}
    assert mirror.total_size() == cache.total_size() == 4


# ---- forget -------------------------------------------------------------------------------


def test_forget_drops_a_leaf_tail_from_a_page_rounded_start():
    cache, allocator = make(page_size=4, num_pages=8)
    tokens = list(range(16))
    pages = put(cache, allocator, tokens)
    assert cache.forget(tokens, 5) == 2  # token 5 rounds up to the page that starts at 8
    assert cache.prefix_length(tokens) == 8 and cache.total_size() == cache.evictable_size() == 2
    assert [allocator.is_free(p) for p in pages] == [False, False, True, True]
    assert allocator.available() == 6
    assert cache.forget(tokens, 8) == 0  # nothing cached from there on
    assert cache.forget(tokens + [99, 99, 99], 4) == 1  # longer tokens are fine; the partial page is ignored
    assert cache.forget(np.array(tokens, dtype=np.int64), 0) == 1
    assert cache.total_size() == 0 and allocator.available() == 8
    assert cache.match_prefix(tokens).length == 0


def test_forget_cascades_up_through_a_split_edge():
    cache, allocator = make()
    put(cache, allocator, list(range(8)))
    cache.match_prefix([0, 1, 2, 99])  # [0, 1, 2] + [3 .. 7]
    cache.events = []
    assert cache.forget(list(range(8)), 1) == 7
    assert cache.events == [CacheEvent(False, None, ids(range(8)), 3), CacheEvent(False, None, ids(range(3)), 1)]
    assert cache.prefix_length(list(range(8))) == 1 and allocator.available() == 63


def test_forget_keeps_what_a_request_holds():
    cache, allocator = make()
    put(cache, allocator, list(range(8)))
    m = cache.match_prefix(list(range(8)))
    cache.lock(m)
    assert cache.forget(list(range(8)), 0) == 0
    assert cache.protected_size() == 8 and allocator.available() == 56
    cache.unlock(m.last_node)
    held = cache.match_prefix(list(range(4)))  # a request holding the first half
    cache.lock(held)
    assert cache.forget(list(range(8)), 2) == 4  # the unlocked tail goes, the locked head stays
    assert cache.prefix_length(list(range(8))) == 4 and cache.protected_size() == 4
    cache.unlock(held.last_node)
    assert cache.forget(list(range(8)), 2) == 2 and allocator.available() == 62


def test_forget_keeps_what_something_else_extends():
    cache, allocator = make()
    put(cache, allocator, list(range(8)))
    put(cache, allocator, [0, 1, 2, 3, 50, 51])  # [0 .. 3] -> {[4 .. 7], [50, 51]}
    assert cache.forget([0, 1, 2, 3], 0) == 0  # two children past the cut
    assert cache.forget(list(range(6)), 0) == 0  # ends inside an edge: the rest of it extends the tokens
    assert cache.forget([0, 1, 2, 3, 4, 5, 9, 9], 0) == 0  # diverges inside an edge
    assert cache.forget([7, 7, 7], 0) == 0 and cache.forget(list(range(8)), 0, namespace="nobody") == 0
    assert cache.total_size() == 10
    assert cache.forget(list(range(8)), 0) == 4  # the leaf goes; its parent still has a child, so it stays
    assert cache.prefix_length([0, 1, 2, 3, 50, 51]) == 6 and cache.total_size() == 6
    assert cache.forget([0, 1, 2, 3, 50, 51], 0) == 6  # now nothing is left to keep it
    assert cache.total_size() == 0 and allocator.available() == 64


def test_forget_without_an_allocator_just_drops_the_pages():
    mirror = RadixCache(page_size=2)
    mirror.insert([1, 2, 3, 4, 5, 6], [0, 0, 0], namespace="t")
    assert mirror.forget([1, 2, 3, 4, 5, 6], 3, namespace="t") == 1
    assert mirror.prefix_length([1, 2, 3, 4, 5, 6], namespace="t") == 4
    assert mirror.forget([1, 2, 3, 4], 0, namespace="t") == 2
    assert mirror.total_size() == 0 and mirror.namespaces() == [None]


@pytest.mark.parametrize("filed", [False, True], ids=["entry-unfiled", "entry-in-sorted-lru"])
def test_a_forgotten_leaf_is_never_freed_again_by_evict(filed):
    """forget drops a leaf whose LRU entry stays behind; evict must skip that entry rather than
    free the leaf's pages a second time (the allocator raises on a double free)."""
    cache, allocator = make(num_pages=32)
    put(cache, allocator, [1, 1, 1, 1])
    put(cache, allocator, [2, 2, 2, 2])
    put(cache, allocator, [2, 2, 3, 3])  # [2, 2] -> {[2, 2], [3, 3]}
    put(cache, allocator, [4, 4, 4, 4])
    if filed:
        assert cache.evict(1) == 1  # sorts every entry into the LRU list; trims [1, 1, 1, 1]
    assert cache.forget([1, 1, 1, 1], 0) == (3 if filed else 4)  # a whole leaf
    assert cache.forget([2, 2, 2, 2], 0) == 2  # a whole leaf; its parent keeps another child
    assert cache.forget([2, 2, 3, 3], 0) == 4  # a leaf, then its parent that became one
    assert cache.forget([4, 4, 4, 4], 2) == 2  # a trimmed leaf keeps its entry
    assert cache.evict(100) == 2
    assert cache.total_size() == 0 and allocator.available() == 32
    put(cache, allocator, [1, 1, 1, 1])  # cached again: a new leaf, evicted once
    assert cache.evict(100) == 4 and allocator.available() == 32


# ---- the mirror against a real cache -------------------------------------------------------


class EventMirrorMachine(RuleBasedStateMachine):
    page_size = 1
    num_pages = 16  # small, so that requests often evict to get pages
    counts: ClassVar[Counter] = Counter()  # which situations the run reached (the test checks it reached them all)

    def __init__(self) -> None:
        super().__init__()
        self.allocator = PageAllocator(self.num_pages)
        self.cache = RadixCache(self.page_size, self.allocator)
        self.cache.events = []
        self.mirror = RadixCache(self.page_size)
        self.streams = token_streams(self.page_size)
        self.running: list[tuple[list[int], Hashable, MatchResult, np.ndarray]] = []
        self.dropped: set[tuple[Hashable, bytes]] = set()  # page prefixes some event removed

    # -- helpers

    def _known(self, namespace) -> list[bytes]:
        return sorted(path for ns, path in leaf_paths(self.cache) if ns == namespace)

    def _draw_prompt(self, data, namespace) -> list[int]:
        """A fresh prompt, or often one that continues (part of) a cached path, or one dropped earlier."""
        tokens = data.draw(self.streams)
        known = self._known(namespace) + sorted(p for ns, p in self.dropped if ns == namespace)
        if known and data.draw(st.booleans()):
            path = np.frombuffer(data.draw(st.sampled_from(known)), dtype=np.int32).tolist()
            keep = data.draw(st.integers(1, len(path) // self.page_size)) * self.page_size
            tokens = path[:keep] + (tokens if data.draw(st.booleans()) else [])
        return tokens

    def _alloc(self, n: int) -> np.ndarray | None:
        pages = self.allocator.alloc(n)
        if pages is None:
            self._evict(n - self.allocator.available())
            pages = self.allocator.alloc(n)
        return pages

    def _evict(self, n: int) -> None:
        leaf_start = {}  # (namespace, path to a leaf's end) -> the token where the leaf begins
        for node in self.cache.nodes():
            if not node.children:
                ns, path = path_bytes(node)
                leaf_start[ns, path] = (len(path) - len(node.key)) // 4
        before, locked = len(self.cache.events), self.cache.protected_size()
        freed = self.cache.evict(n)
        assert freed == n or (freed < n and self.cache.evictable_size() == 0)
        for event in self.cache.events[before:]:
            start = leaf_start.get((event.namespace, event.tokens))
            if start is None:
                self.counts["evict cascaded to a parent"] += 1
            elif event.start > start:
                self.counts["evict trimmed a leaf in the middle"] += 1
        if freed and locked:
            self.counts["evict around locked nodes"] += 1

    # -- rules

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def begin_request(self, data, namespace) -> None:
        """match_prefix, lock, take pages for the uncached tail (evicting if need be)."""
        tokens = self._draw_prompt(data, namespace)
        m = self.cache.match_prefix(tokens, namespace)
        self.cache.lock(m)
        own = self._alloc(len(tokens) // self.page_size - m.pages.size)
        if own is None:
            self.cache.unlock(m.last_node)
            return
        self.running.append((tokens, namespace, m, own))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), abort=st.booleans())
    def finish_request(self, data, abort) -> None:
        """commit (or abort), then unlock."""
        tokens, namespace, m, own = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        if abort:
            self.allocator.free(own)
        else:
            assert self.cache.commit(tokens, np.r_[m.pages, own], m.length, namespace) >= m.length
        self.cache.unlock(m.last_node)

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def insert(self, data, namespace) -> None:
        tokens = self._draw_prompt(data, namespace)
        pages = self._alloc(len(tokens) // self.page_size)
        if pages is None:
            return
        cached = self.cache.insert(tokens, pages, namespace)
        self.allocator.free(pages[: cached // self.page_size])

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def match(self, data, namespace) -> None:
        """Splits edges and refreshes ticks in the real tree only."""
        self.cache.match_prefix(self._draw_prompt(data, namespace), namespace)

    @rule(n=st.one_of(st.integers(0, 3), st.integers(0, 16)))
    def evict(self, n) -> None:
        self._evict(n)

    @precondition(lambda self: self.cache.total_size())
    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def forget(self, data, namespace) -> None:
        leaves = self._known(namespace)
        chains = []  # leaves whose parent becomes a leaf when they go
        for node in self.cache.nodes():
            if not node.children and not node.parent.is_root and len(node.parent.children) == 1:
                ns, path = path_bytes(node)
                chains += [path] if ns == namespace else []
        chains.sort()
        if chains and data.draw(st.booleans()):
            tokens = np.frombuffer(data.draw(st.sampled_from(chains)), dtype=np.int32).tolist()
        elif leaves and data.draw(st.booleans()):  # an event-like path: a whole cached path
            tokens = np.frombuffer(data.draw(st.sampled_from(leaves)), dtype=np.int32).tolist()
            tokens += data.draw(st.lists(st.integers(0, 999), max_size=self.page_size - 1))
        else:
            tokens = self._draw_prompt(data, namespace)
        self._forget(tokens, data.draw(st.one_of(st.just(0), st.integers(0, len(tokens) + self.page_size))), namespace)

    @precondition(lambda self: any(m.length for _, _, m, _ in self.running))
    @rule(data=st.data())
    def forget_held(self, data) -> None:
        """forget what a running request holds locked (and maybe what extends it)."""
        tokens, namespace, m, _ = data.draw(st.sampled_from([r for r in self.running if r[2].length]))
        tokens = tokens if data.draw(st.booleans()) else tokens[: m.length]
        self._forget(tokens, data.draw(st.integers(0, m.length)), namespace)

    def _forget(self, tokens: list[int], start: int, namespace) -> None:
        """forget on the real cache: it records events like eviction does, returns pages to the
        allocator, and drops exactly the unlocked, unextended page prefixes past the cut."""
        model = page_prefixes(self.cache)
        ps, pb = self.page_size, self.page_size * 4
        key = np.asarray(tokens, dtype=np.int32).tobytes()[: len(tokens) // ps * pb]
        k = self.cache.prefix_length(tokens, namespace) // ps
        cut = -(-start // ps)
        expected, j = 0, k
        while j > cut and not model[namespace, key[: j * pb]]:
            prefix = key[: j * pb]
            extensions = sum(ns == namespace and len(p) == (j + 1) * pb and p.startswith(prefix) for ns, p in model)
            if extensions != (0 if j == k else 1):  # only the page just dropped may extend it
                break
            expected, j = expected + 1, j - 1
        if j > cut and model[namespace, key[: j * pb]]:
            self.counts["forget kept a locked path"] += 1
        before = len(self.cache.events)
        assert self.cache.forget(tokens, start, namespace) == expected
        if len(self.cache.events) - before > 1:
            self.counts["forget cascaded to a parent"] += 1
        assert set(page_prefixes(self.cache)) == set(model) - {(namespace, key[: i * pb]) for i in range(j + 1, k + 1)}
        if expected:
            self.counts["forget dropped pages"] += 1

    @precondition(lambda self: not self.running)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        assert self.allocator.used() == 0

    # -- the mirror

    @invariant()
    def mirror_equals_cache(self) -> None:
        events = list(self.cache.events)
        self.cache.events.clear()
        ps, pb = self.page_size, self.page_size * 4
        for event in events:
            assert type(event) is CacheEvent and type(event.tokens) is bytes
            assert len(event.tokens) % pb == 0 and event.start % ps == 0
            n = len(event.tokens) // 4
            assert 0 <= event.start < n
            new = {(event.namespace, event.tokens[:end]) for end in range(event.start * 4 + pb, n * 4 + 1, pb)}
            if event.stored:
                if new & self.dropped:
                    self.counts["stored again after being dropped"] += 1
                assert apply_event(self.mirror, event) == event.start
            else:
                self.dropped |= new
                if event.namespace is not None:
                    self.counts["dropped in a second namespace"] += 1
                assert self.mirror.prefix_length(np.frombuffer(event.tokens, dtype=np.int32), event.namespace) == n
                assert apply_event(self.mirror, event) == (n - event.start) // ps
        assert leaf_paths(self.mirror) == leaf_paths(self.cache)
        assert self.mirror.total_size() == self.mirror.evictable_size() == self.cache.total_size()
        assert set(self.mirror.namespaces()) == set(self.cache.namespaces())
        assert all(ns is None or root.children for ns, root in self.mirror._roots.items())

    @invariant()
    def pages_are_accounted(self) -> None:
        cached = self.cache.cached_pages().tolist()
        held = [p for *_, own in self.running for p in own.tolist()]
        assert len(set(cached + held)) == len(cached) + len(held)
        assert self.allocator.used() == len(cached) + len(held)


class EventMirrorPage4Machine(EventMirrorMachine):
    page_size = 4
    num_pages = 12


_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("machine", [EventMirrorMachine, EventMirrorPage4Machine], ids=["page1", "page4"])
def test_a_mirror_applying_the_events_holds_what_the_cache_holds(machine):
    machine.counts = Counter()
    run_state_machine_as_test(machine, settings=_SETTINGS)
    # the situations the mirror must follow all came up (the rarer ones, forget cascading or
    # stopping at a lock, are counted too but left to the unit tests above)
    assert set(machine.counts) >= {
        "evict trimmed a leaf in the middle",
        "evict cascaded to a parent",
        "evict around locked nodes",
        "dropped in a second namespace",
        "stored again after being dropped",
        "forget dropped pages",
    }, machine.counts
