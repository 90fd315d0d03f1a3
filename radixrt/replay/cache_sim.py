"""Cache-only replay: drive a request stream through the radix cache and page allocator alone,
as the engine's admission path would, to measure hit rates (and the cost of the cache calls)
without a model.

Each request runs match_prefix -> lock -> allocate pages for the uncached tail (when the pool is
full, evicting exactly as many pages as needed, in the order of the eviction ``policy``, "lru" or
"adaptive", the engine's rule) -> commit (insert, freeing the pages that duplicate what was cached
meanwhile) -> unlock. Outputs are not cached; a request larger than the whole pool is served but
not cached. With host and disk tiers, the tree moves
what the device evicts down and loads it back on a match, exactly as in the engine; no K/V is
copied.

``engine_rules`` adds the two ways the engine's own admission differs, so that a replay through
the engine one request at a time (generating nothing) hits exactly as simulated: a request never
takes its last token from the cache (its logits must be computed), and it holds a page for its
partial last page too while it runs (K/V is written for every token), freed when it ends.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from radixrt.cache import PageAllocator, RadixCache
from radixrt.cache.tiers import LowerTiers


@dataclass
class CacheReplay:
    requests: int = 0
    tokens: int = 0
    hit_tokens: int = 0
    host_hit_tokens: int = 0  # of hit_tokens, loaded back from a host tier
    disk_hit_tokens: int = 0  # of hit_tokens, loaded back from a disk tier
    uncacheable: int = 0  # requests larger than the whole pool: served, not cached
    evict_calls: int = 0
    evicted_pages: int = 0
    match_s: float = 0.0
    lock_s: float = 0.0
    insert_s: float = 0.0
    evict_s: float = 0.0

    @property
    def cache_s(self) -> float:
        return self.match_s + self.lock_s + self.insert_s + self.evict_s

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.tokens if self.tokens else 0.0

    def figures(self) -> dict:
        rate = lambda n, s: round(n / s, 1) if s else None  # noqa: E731
        return {
            "requests": self.requests,
            "hit_rate": round(self.hit_rate, 4),
            "host_hit_rate": round(self.host_hit_tokens / self.tokens, 4) if self.tokens else 0.0,
            "disk_hit_rate": round(self.disk_hit_tokens / self.tokens, 4) if self.tokens else 0.0,
            "requests_per_s": rate(self.requests, self.cache_s),
            "match_ops_per_s": rate(self.requests, self.match_s),
            "insert_ops_per_s": rate(self.requests - self.uncacheable, self.insert_s),
            "evict_ops_per_s": rate(self.evict_calls, self.evict_s),
            "evicted_pages_per_s": rate(self.evicted_pages, self.evict_s),
            "match_tokens_per_s": rate(self.tokens, self.match_s),
            "evict_calls": self.evict_calls,
            "uncacheable": self.uncacheable,
        }


def simulate(
    prompts: Iterable[np.ndarray],
    page_size: int,
    capacity_pages: int,
    engine_rules: bool = False,
    host_pages: int = 0,
    disk_pages: int = 0,
    policy: str = "lru",
) -> CacheReplay:
    """One pass of the admission loop over ``prompts`` with a pool of ``capacity_pages`` (and host
    and disk tiers of ``host_pages`` and ``disk_pages`` below it, as the engine's) under the
    eviction ``policy``; only the cache calls are timed (the garbage collector is off meanwhile,
    as in the peer replays)."""
    allocator = PageAllocator(capacity_pages)
    tiers = LowerTiers(host_pages, disk_pages) if host_pages or disk_pages else None
    cache = RadixCache(page_size, allocator, tiers, policy=policy)
    r = CacheReplay()
    clock = time.perf_counter
    gc.collect()
    gc.disable()
    try:
        for tokens in prompts:
            n_pages = len(tokens) // page_size
            held = -(-len(tokens) // page_size) if engine_rules else n_pages  # pages the request needs while it runs
            r.requests += 1
            r.tokens += n_pages * page_size
            t0 = clock()
            m = cache.match_prefix(tokens[: len(tokens) - 1] if engine_rules else tokens)
            t1 = clock()
            cache.lock(m)
            r.lock_s += clock() - t1
            r.match_s += t1 - t0
            r.hit_tokens += m.length
            r.host_hit_tokens += m.loaded[0]
            r.disk_hit_tokens += m.loaded[1]
            need = held - m.pages.size
            own = allocator.alloc(need)
            if own is None:
                t0 = clock()
                r.evicted_pages += cache.evict(need - allocator.available())
                r.evict_s += clock() - t0
                r.evict_calls += 1
                own = allocator.alloc(need)
            if own is None:
                r.uncacheable += 1
                t0 = clock()
                cache.unlock(m.last_node)
                r.lock_s += clock() - t0
                continue
            pages = np.concatenate([m.pages, own])
            allocator.free(pages[n_pages:])  # the partial last page (engine rules): the request's own
            t0 = clock()
            cache.commit(tokens[: n_pages * page_size], pages[:n_pages], held=m.length)
            t1 = clock()
            cache.unlock(m.last_node)
            r.lock_s += clock() - t1
            r.insert_s += t1 - t0
    finally:
        gc.enable()
    return r
