"""Eviction policies: the priority the radix tree gives each node, smallest evicted first.

The tree asks its policy for a key whenever a request reuses a node (``match_key``) and when it
caches new pages (``admit``), and tells it which pages left the tree (``evicted``). Only leaves
are candidates, so a parent still goes after its children whatever the keys say.

``LruPolicy``: the key is the tick of last use (least recently used first).

``AdaptivePolicy``: "ghost-promoted LRU with a self-tuned shift". A page reused while cached, or
cached again while a ghost list still remembers its eviction, is *promoted*: its key is
``tick + shift``, so it outlives pages used once by ``shift`` ticks. The ghost list keeps the
identities of recently evicted pages, each with its class (promoted or not) and the count of its
class's evictions so far. When a page comes back among the last ``window`` evictions of its
class, that class would have hit it with a little more room: a promoted page pushes the shift
up, an unpromoted one pulls it down. A shift of 0 is exactly LRU, and it stays there while the
pages that come back soon after their eviction are ones used only once before (recency is all
there is to learn). Ticks are the tree's (a match and an insert each take one, so about two per
request); ``up`` and ``down`` are in ticks. A page's identity chains Python's ``hash`` over its
prefix (``page_ids``): it is stable within a process only, which is as long as the ghost list
lives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple, Protocol


class Run(NamedTuple):
    """Consecutive new pages that share a key: one node of the tree."""

    pages: int
    prio: float
    promoted: bool


class EvictionPolicy(Protocol):
    name: str

    def match_key(self, tick: int) -> float:
        """The key of a node a request reuses at ``tick``."""

    def page_ids(self, prev: int | None, key: bytes, page_bytes: int) -> list[int] | None:
        """Identities of the pages of ``key`` (whole pages) following the page ``prev``; None when
        the policy needs none."""

    def admit(self, ids: list[int] | None, pages: int, tick: int) -> list[Run]:
        """Keys of ``pages`` new pages cached at ``tick``, front to back."""

    def evicted(self, ids: list[int], promoted: bool) -> None:
        """These pages left the tree (every tier)."""


class LruPolicy:
    name = "lru"

    def match_key(self, tick: int) -> float:
        return tick

    def page_ids(self, prev: int | None, key: bytes, page_bytes: int) -> None:
        return None

    def admit(self, ids: list[int] | None, pages: int, tick: int) -> list[Run]:
        return [Run(pages, tick, False)]

    def evicted(self, ids: list[int], promoted: bool) -> None:
        pass


class AdaptivePolicy:
    """Ghost-promoted LRU (see the module docstring).

    ``capacity`` is the cache's size in pages (with lower tiers, the distinct pages they hold
    together, since the ghost list remembers pages that left every tier). The ghost holds
    ``ghost * capacity`` identities; a ghost hit moves the shift when it is among the last
    ``window * capacity`` evictions of its class: to ``shift * (1 + rate) + up`` (at most
    ``max_shift``, where a promoted page outranks every unpromoted one) for a promoted page, to
    ``shift / (1 + rate) - down`` (at least 0) for an unpromoted one. The new pages of one insert
    that came back from the ghost share one key: ``tick`` plus the shift after their ghost hits.
    """

    name = "adaptive"

    def __init__(
        self,
        capacity: int,
        ghost: float = 4.0,
        window: float = 0.05,
        rate: float = 0.1,
        up: float = 2.0,
        down: float = 4.0,
        max_shift: float = 2e9,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"the adaptive policy needs the cache's capacity in pages, got {capacity}")
        self.shift = 0.0
        self.ghost_limit = max(1, int(ghost * capacity))
        self.window = max(1, int(window * capacity))
        self.rate, self.up, self.down, self.max_shift = rate, up, down, max_shift
        self.evictions = [0, 0]  # pages that left the tree, unpromoted and promoted
        self.ghost: OrderedDict[int, tuple[bool, int]] = OrderedDict()  # identity -> (promoted, its class's count)

    def match_key(self, tick: int) -> float:
        return tick + self.shift

    def page_ids(self, prev: int | None, key: bytes, page_bytes: int) -> list[int]:
        ids = []
        for off in range(0, len(key), page_bytes):
            prev = hash((prev, key[off : off + page_bytes]))
            ids.append(prev)
        return ids

    def admit(self, ids: list[int] | None, pages: int, tick: int) -> list[Run]:
        pop = self.ghost.pop
        seen = [pop(page, None) for page in ids]
        if not any(seen):
            return [Run(pages, tick, False)]
        for entry in seen:
            if entry is not None:
                self._ghost_hit(*entry)
        runs, start = [], 0
        for i in range(1, pages + 1):
            if i == pages or (seen[i] is None) != (seen[start] is None):
                hit = seen[start] is not None
                runs.append(Run(i - start, tick + self.shift if hit else tick, hit))
                start = i
        return runs

    def _ghost_hit(self, promoted: bool, count: int) -> None:
        """A page evicted as ``promoted`` came back; ``count``: its class's evictions then."""
        if self.evictions[promoted] - count > self.window:
            return
        if promoted:
            self.shift = min(self.max_shift, self.shift * (1 + self.rate) + self.up)
        else:
            self.shift = max(0.0, self.shift / (1 + self.rate) - self.down)

    def evicted(self, ids: list[int], promoted: bool) -> None:
        ghost, count = self.ghost, self.evictions[promoted]
        for page in reversed(ids):  # a node's pages leave from its tail
            count += 1
            ghost[page] = (promoted, count)
        self.evictions[promoted] = count
        for _ in range(len(ghost) - self.ghost_limit):
            ghost.popitem(last=False)


POLICIES = ("lru", "adaptive")


def make_policy(policy: str | EvictionPolicy, capacity: int | None) -> EvictionPolicy:
    """The policy named ``policy`` for a cache of ``capacity`` pages (a policy object as it is)."""
    if not isinstance(policy, str):
        return policy
    if policy == "lru":
        return LruPolicy()
    if policy == "adaptive":
        if capacity is None:
            raise ValueError(
                "the adaptive eviction policy is sized by the cache's capacity: give the cache an allocator"
            )
        return AdaptivePolicy(capacity)
    raise ValueError(f"unknown eviction policy {policy!r}: choose one of {', '.join(POLICIES)}")


def namespace_seed(namespace: Hashable) -> int:
    """The identity a namespace's first page chains from."""
    return hash(("radixrt-namespace", namespace))
