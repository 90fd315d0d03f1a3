"""Which worker takes a request: the router's view of every worker's cache and load, and the
policies that choose from it.

A worker's view holds two radix trees per worker (``RadixCache``s without pages): ``cached``, an
exact copy of the worker's cache kept by its cache events (so it is right up to one step), and
``inflight``, the prompts routed to the worker that have not ended, which the worker is caching as
it computes them. A request's match on a worker is the longer of the two: a burst of requests that
share a new prefix follows the first one instead of spreading before the prefix is cached.
Namespaces stay apart in both trees.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from radixrt.cache import Node, RadixCache
from radixrt.cache.ids import ID_DTYPE
from radixrt.wire.protocol import WireCacheEvent


@dataclass(eq=False)
class WorkerView:
    page_size: int
    cached: RadixCache = field(init=False)
    inflight: RadixCache = field(init=False)
    load: int = 0  # requests routed to it that have not ended

    def __post_init__(self) -> None:
        self.cached, self.inflight = RadixCache(self.page_size), RadixCache(self.page_size)

    def apply(self, events: list[WireCacheEvent]) -> None:
        for e in events:
            tokens = np.frombuffer(e.tokens, dtype=ID_DTYPE)
            if e.stored:
                self.cached.insert(tokens, np.zeros(tokens.size // self.page_size, dtype=ID_DTYPE), e.namespace)
            else:
                self.cached.forget(tokens, e.start, e.namespace)

    def match(self, tokens: np.ndarray, namespace: Hashable) -> int:
        return max(self.cached.prefix_length(tokens, namespace), self.inflight.prefix_length(tokens, namespace))

    def add(self, tokens: np.ndarray, namespace: Hashable) -> Node:
        """Count a request routed here; returns what ``remove`` takes when it ends."""
        self.load += 1
        self.inflight.insert(tokens, np.zeros(tokens.size // self.page_size, dtype=ID_DTYPE), namespace)
        match = self.inflight.match_prefix(tokens, namespace)
        self.inflight.lock(match)
        return match.last_node

    def remove(self, node: Node) -> None:
        self.load -= 1
        self.inflight.unlock(node)
        self.inflight.evict(self.inflight.evictable_size())


@dataclass
class CacheAware:
    """The worker with the longest match (the least loaded among equals), unless the loads are
    out of balance: when the busiest worker has more than ``balance_abs`` requests more than the
    idlest and more than ``balance_rel`` times as many, the least loaded worker (as sgl-router)."""

    balance_abs: int = 2
    balance_rel: float = 1.5

    def choose(self, views: dict[str, WorkerView], tokens: np.ndarray, namespace: Hashable) -> str:
        loads = [v.load for v in views.values()]
        if max(loads) - min(loads) > self.balance_abs and max(loads) > self.balance_rel * min(loads):
            return min(views, key=lambda w: views[w].load)
        return max(views, key=lambda w: (views[w].match(tokens, namespace), -views[w].load))


@dataclass
class RoundRobin:
    """Each worker in turn, blind to caches (for comparison)."""

    _turn: itertools.count = field(default_factory=itertools.count)

    def choose(self, views: dict[str, WorkerView], tokens: np.ndarray, namespace: Hashable) -> str:
        names = sorted(views)
        return names[next(self._turn) % len(names)]


POLICIES = ("cache_aware", "round_robin")


def make_policy(name: str, balance_abs: int = 2, balance_rel: float = 1.5) -> CacheAware | RoundRobin:
    if name == "cache_aware":
        return CacheAware(balance_abs, balance_rel)
    if name == "round_robin":
        return RoundRobin()
    raise ValueError(f"unknown routing policy {name!r}: choose from {', '.join(POLICIES)}")
