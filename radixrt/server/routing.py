"""Which worker takes a request: the router's view of every worker's cache and load, and the
policies that choose from it.

A worker's view holds radix trees (``RadixCache``s without pages): ``cached``, one per tier of
the worker's cache (device, host, disk), kept by its cache events (so it is right up to one step),
and ``inflight``, the prompts routed to the worker that have not ended, which the worker is caching
as it computes them. A request's match on a worker is the longer of its device match and its
in-flight match, plus what lower tiers hold beyond that, discounted: loading a page from the host
costs far less than computing it, but more than finding it on the device. A burst of requests that
share a new prefix follows the first one instead of spreading before the prefix is cached.
Namespaces stay apart in every tree.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from radixrt.cache import Node, RadixCache
from radixrt.cache.ids import ID_DTYPE
from radixrt.wire.protocol import WireCacheEvent

MAX_ROUTE_KEYS = 100_000
TIER_WORTH = (1.0, 0.8, 0.5)  # a token found on the device, the host, the disk, against one computed


@dataclass(eq=False)
class WorkerView:
    page_size: int
    cached: list[RadixCache] = field(init=False)  # by tier: device, host, disk
    inflight: RadixCache = field(init=False)
    load: int = 0  # requests routed to it that have not ended

    def __post_init__(self) -> None:
        self.cached = [RadixCache(self.page_size) for _ in TIER_WORTH]
        self.inflight = RadixCache(self.page_size)

    def apply(self, events: list[WireCacheEvent]) -> None:
        for e in events:
            tokens = np.frombuffer(e.tokens, dtype=ID_DTYPE)
            tier = min(max(e.tier, 0), len(self.cached) - 1)
            for t, tree in enumerate(self.cached):
                if e.stored and t == tier:
                    tree.insert(tokens, np.zeros(tokens.size // self.page_size, dtype=ID_DTYPE), e.namespace)
                else:  # evicted, or moved to another tier
                    tree.forget(tokens, e.start, e.namespace)

    def match(self, tokens: np.ndarray, namespace: Hashable) -> float:
        """Tokens of ``tokens`` this worker need not compute, lower tiers' discounted."""
        device, host, disk = (tree.prefix_length(tokens, namespace) for tree in self.cached)
        reach = max(device, self.inflight.prefix_length(tokens, namespace))
        worth = float(reach)
        for length, value in ((host, TIER_WORTH[1]), (disk, TIER_WORTH[2])):
            if length > reach:
                worth += value * (length - reach)
                reach = length
        return worth

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


class RouteKeys:
    """Where each route key's requests went (OpenAI's ``prompt_cache_key``): its next request
    goes there too while that worker lives. The most recent ``MAX_ROUTE_KEYS`` are kept."""

    def __init__(self) -> None:
        self._where: OrderedDict[tuple, str] = OrderedDict()

    def choose(self, views: dict[str, WorkerView], namespace: Hashable, key: str | None, pick) -> str:
        if key is None:
            return pick()
        name = self._where.get((namespace, key))
        if name not in views:
            name = pick()
        self._where[(namespace, key)] = name
        self._where.move_to_end((namespace, key))
        if len(self._where) > MAX_ROUTE_KEYS:
            self._where.popitem(last=False)
        return name


@dataclass
class CacheAware:
    """The worker with the longest match (the least loaded among equals), unless the loads are
    out of balance: when the busiest worker has more than ``balance_abs`` requests more than the
    idlest and more than ``balance_rel`` times as many, the least loaded worker (as sgl-router).
    A request with a route key goes where that key's requests went."""

    balance_abs: int = 2
    balance_rel: float = 1.5
    keys: RouteKeys = field(default_factory=RouteKeys)

    def choose(
        self, views: dict[str, WorkerView], tokens: np.ndarray, namespace: Hashable, route_key: str | None = None
    ) -> str:
        return self.keys.choose(views, namespace, route_key, lambda: self._pick(views, tokens, namespace))

    def _pick(self, views: dict[str, WorkerView], tokens: np.ndarray, namespace: Hashable) -> str:
        loads = [v.load for v in views.values()]
        if max(loads) - min(loads) > self.balance_abs and max(loads) > self.balance_rel * min(loads):
            return min(views, key=lambda w: views[w].load)
        return max(views, key=lambda w: (views[w].match(tokens, namespace), -views[w].load))


@dataclass
class RoundRobin:
    """Each worker in turn, blind to caches (for comparison); route keys are kept all the same."""

    _turn: itertools.count = field(default_factory=itertools.count)
    keys: RouteKeys = field(default_factory=RouteKeys)

    def choose(
        self, views: dict[str, WorkerView], tokens: np.ndarray, namespace: Hashable, route_key: str | None = None
    ) -> str:
        names = sorted(views)
        return self.keys.choose(views, namespace, route_key, lambda: names[next(self._turn) % len(names)])


POLICIES = ("cache_aware", "round_robin")


def make_policy(name: str, balance_abs: int = 2, balance_rel: float = 1.5) -> CacheAware | RoundRobin:
    if name == "cache_aware":
        return CacheAware(balance_abs, balance_rel)
    if name == "round_robin":
        return RoundRobin()
    raise ValueError(f"unknown routing policy {name!r}: choose from {', '.join(POLICIES)}")
