"""The radix cache against a naive model, driven by random request streams (hypothesis).

The model keeps one dict entry per cached page prefix: ``(namespace, tokens of k whole pages)``
maps to the page holding page k, its last-access tick and its lock count. Matching is a longest
key lookup, eviction removes the least recently used unlocked page that no other entry extends,
one page at a time. After every step the tree must hold exactly the model's entries.

A match may be locked later than it was made: the lock must fail exactly when one of the matched
entries was evicted in between (an entry is an object, so one evicted and cached again counts).
``prefix_length`` must agree with the model's match and change nothing: the model's ticks do not
move, so a refreshed tick in the tree would show up as a different eviction order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from radixrt.cache import MatchResult, PageAllocator, RadixCache
from testkit.caches import token_streams

NAMESPACES = (None, "tenant-b")


@dataclass
class Entry:
    page: int
    tick: int
    locks: int = 0


@dataclass
class NaiveCache:
    page_size: int
    entries: dict[tuple, Entry] = field(default_factory=dict)
    tick: int = 0

    def _prefixes(self, tokens: list[int], namespace, pages: int):
        return [(namespace, tuple(tokens[: k * self.page_size])) for k in range(1, pages + 1)]

    def peek(self, tokens: list[int], namespace) -> list[Entry]:
        """The entries of the longest cached prefix, untouched."""
        hit = []
        for key in self._prefixes(tokens, namespace, len(tokens) // self.page_size):
            if key not in self.entries:
                break
            hit.append(self.entries[key])
        return hit

    def match(self, tokens: list[int], namespace) -> tuple[list[int], int]:
        self.tick += 1
        hit = self.peek(tokens, namespace)
        for entry in hit:
            entry.tick = self.tick
        return [e.page for e in hit], len(hit) * self.page_size

    def insert(self, tokens: list[int], pages: list[int], namespace) -> int:
        self.tick += 1
        cached = None
        for k, key in enumerate(self._prefixes(tokens, namespace, len(pages))):
            if key in self.entries:
                self.entries[key].tick = self.tick
            else:
                cached = k if cached is None else cached
                self.entries[key] = Entry(pages[k], self.tick)
        return (len(pages) if cached is None else cached) * self.page_size

    def lock(self, tokens: list[int], namespace, length: int, delta: int) -> None:
        for key in self._prefixes(tokens, namespace, length // self.page_size):
            self.entries[key].locks += delta

    def evict(self, num_pages: int) -> list[int]:
        freed = []
        for _ in range(num_pages):
            extended = {(ns, toks[: -self.page_size]) for ns, toks in self.entries}
            leaves = [(e.tick, key) for key, e in self.entries.items() if e.locks == 0 and key not in extended]
            if not leaves:
                break
            leaves.sort()
            assert len(leaves) == 1 or leaves[0][0] != leaves[1][0], "two evictable leaves share a tick"
            freed.append(self.entries.pop(leaves[0][1]).page)
        return freed


@dataclass
class Running:
    tokens: list[int]
    namespace: object
    match: MatchResult
    own_pages: np.ndarray


@dataclass
class Pending:
    """A match not locked yet, with the model's entries it covered."""

    tokens: list[int]
    namespace: object
    match: MatchResult
    entries: list[Entry]


class RadixCacheMachine(RuleBasedStateMachine):
    page_size = 1
    num_pages = 16  # small enough that requests often have to evict

    def __init__(self) -> None:
        super().__init__()
        self.allocator = PageAllocator(self.num_pages)
        self.cache = RadixCache(self.page_size, self.allocator)
        self.model = NaiveCache(self.page_size)
        self.running: list[Running] = []
        self.pending: list[Pending] = []

    def _alloc(self, n: int, locked: list[int]) -> np.ndarray | None:
        pages = self.allocator.alloc(n)
        if pages is None:
            self._evict(n - self.allocator.available(), locked)
            pages = self.allocator.alloc(n)
        return pages

    def _evict(self, n: int, locked: list[int] = ()) -> None:
        before = set(self.cache.cached_pages().tolist())
        freed = self.cache.evict(n)
        gone = before - set(self.cache.cached_pages().tolist())
        expected = self.model.evict(n)
        assert freed == len(expected) == len(gone)
        assert gone == set(expected)
        assert not gone & set(locked), "evicted a locked page"

    def _locked_pages(self) -> list[int]:
        return [p for r in self.running for p in r.match.pages.tolist()]

    def _draw_prompt(self, data, namespace) -> list[int]:
        """A fresh prompt, or half the time one that continues a cached prefix (so that matches,
        locks and peeks hit something often)."""
        tokens = data.draw(token_streams(self.page_size))
        cached = [key for ns, key in self.model.entries if ns == namespace]
        if cached and data.draw(st.booleans()):
            tokens = list(data.draw(st.sampled_from(cached))) + tokens
        return tokens

    def _check_match(self, tokens: list[int], namespace) -> MatchResult:
        got = self.cache.match_prefix(np.array(tokens, dtype=np.int64), namespace)
        pages, length = self.model.match(tokens, namespace)
        assert got.length == length and got.pages.tolist() == pages
        return got

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES), evict=st.integers(0, 3))
    def match(self, data, namespace, evict) -> None:
        """Match a prompt and keep the match, to lock it later; another request may evict first."""
        tokens = self._draw_prompt(data, namespace)
        m = self._check_match(tokens, namespace)
        self.pending = self.pending[-3:] + [Pending(tokens, namespace, m, self.model.peek(tokens, namespace))]
        self._evict(evict, self._locked_pages())

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def peek(self, data, namespace) -> None:
        tokens = self._draw_prompt(data, namespace)
        before = [(n.id, n.key, n.tick, n.lru_entry) for n in self.cache.nodes()]
        got = self.cache.prefix_length(np.array(tokens, dtype=np.int64), namespace)
        assert got == len(self.model.peek(tokens, namespace)) * self.page_size
        assert [(n.id, n.key, n.tick, n.lru_entry) for n in self.cache.nodes()] == before

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def begin_request(self, data, namespace) -> None:
        """Match and lock a prompt, then take pages for its uncached tail."""
        tokens = self._draw_prompt(data, namespace)
        self._begin(tokens, namespace, self._check_match(tokens, namespace))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def lock_later(self, data) -> None:
        """Lock a kept match: refused exactly when eviction took one of its pages meanwhile."""
        p = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        stale = any(
            self.model.entries.get(key) is not e
            for key, e in zip(self.model._prefixes(p.tokens, p.namespace, len(p.entries)), p.entries)
        )
        if stale:
            with pytest.raises(RuntimeError, match="trimmed/evicted since the match"):
                self.cache.lock(p.match)
        else:
            self._begin(p.tokens, p.namespace, p.match)

    def _begin(self, tokens: list[int], namespace, m: MatchResult) -> None:
        self.cache.lock(m)
        self.model.lock(tokens, namespace, m.length, +1)
        own = self._alloc(len(tokens) // self.page_size - m.pages.size, self._locked_pages() + m.pages.tolist())
        if own is None:
            self.cache.unlock(m.last_node)
            self.model.lock(tokens, namespace, m.length, -1)
            return
        self.running.append(Running(tokens, namespace, m, own))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), abort=st.booleans())
    def finish_request(self, data, abort) -> None:
        """Commit the request's prompt (or abort it), unlock."""
        r = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        if abort:
            self.allocator.free(r.own_pages)
        else:
            pages = np.concatenate([r.match.pages, r.own_pages])
            cached = self.cache.commit(r.tokens, pages, r.match.length, r.namespace)
            assert cached == self.model.insert(r.tokens, pages.tolist(), r.namespace)
            assert cached >= r.match.length
        self.cache.unlock(r.match.last_node)
        self.model.lock(r.tokens, r.namespace, r.match.length, -1)

    @rule(data=st.data(), namespace=st.sampled_from(NAMESPACES))
    def insert_unlocked(self, data, namespace) -> None:
        tokens = data.draw(token_streams(self.page_size))
        pages = self._alloc(len(tokens) // self.page_size, self._locked_pages())
        if pages is None:
            return
        cached = self.cache.insert(tokens, pages, namespace)
        assert cached == self.model.insert(tokens, pages.tolist(), namespace)
        self.allocator.free(pages[: cached // self.page_size])

    @rule(n=st.integers(0, 20))
    def evict(self, n) -> None:
        self._evict(n, self._locked_pages())

    @precondition(lambda self: not self.running)
    @rule()
    def reset(self) -> None:
        self.cache.reset()
        self.model.entries.clear()
        assert self.allocator.used() == 0

    @invariant()
    def no_empty_namespace_root(self) -> None:
        assert all(ns is None or root.children for ns, root in self.cache._roots.items())

    @invariant()
    def tree_equals_model(self) -> None:
        seen = {}
        for node in self.cache.nodes():
            assert node.lock_ref >= 0
            path, up = [], node
            while not up.is_root:
                path.append(up.tokens.tolist())
                up = up.parent
            prefix = [t for part in reversed(path[1:]) for t in part]
            for j, page in enumerate(node.pages.tolist()):
                prefix += node.tokens[j * self.page_size : (j + 1) * self.page_size].tolist()
                key = (up.namespace, tuple(prefix))
                assert key not in seen
                seen[key] = page
                assert node.lock_ref == self.model.entries[key].locks
        assert seen == {key: e.page for key, e in self.model.entries.items()}

    @invariant()
    def pages_are_accounted(self) -> None:
        cached = self.cache.cached_pages().tolist()
        held = [p for r in self.running for p in r.own_pages.tolist()]
        assert len(set(cached)) == len(cached), "a page is owned twice by the tree"
        assert not set(cached) & set(held), "a page is owned by the tree and a request"
        assert len(set(held)) == len(held)
        assert self.allocator.used() == len(cached) + len(held)
        assert all(not self.allocator.is_free(p) for p in cached + held)

    @invariant()
    def sizes_add_up(self) -> None:
        c = self.cache
        assert c.evictable_size() >= 0 and c.protected_size() >= 0
        assert c.evictable_size() + c.protected_size() == c.total_size() == len(self.model.entries)
        assert c.protected_size() == sum(e.locks > 0 for e in self.model.entries.values())


class RadixCachePage16Machine(RadixCacheMachine):
    page_size = 16
    num_pages = 24


_settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixCachePage1 = RadixCacheMachine.TestCase
TestRadixCachePage1.settings = _settings
TestRadixCachePage16 = RadixCachePage16Machine.TestCase
TestRadixCachePage16.settings = _settings
