"""Pins: the prefixes that finished ``pin=True`` requests keep cached, safe from eviction, until
``unpin`` (a program's shared trunk, say, that its branches reuse)."""

from __future__ import annotations

from radixrt.cache import RadixCache
from radixrt.cache.radix_cache import Node
from radixrt.engine.request import Request

MAX_PINNED_FRACTION = 0.5  # of the KV pool's pages: the most that pins may hold


class Pins(dict):
    """Request id -> (the cache node its pin holds, its pages). A pin is best-effort: one that would
    take pinned pages past ``MAX_PINNED_FRACTION`` of the pool is refused (counted), so that pins
    never starve running requests."""

    def __init__(self, cache: RadixCache, pool_pages: int) -> None:
        super().__init__()
        self.cache, self.most = cache, MAX_PINNED_FRACTION * pool_pages
        self.refused = 0

    def keep(self, req: Request) -> None:
        """Pin what ``req`` computed; right after the scheduler committed it (nothing evicted between)."""
        match = self.cache.match_prefix(req.tokens[: req.computed], req.namespace)
        pinned: int = sum(pages for _, pages in self.values())  # overlapping pins count twice: a safe side
        if pinned + match.pages.size <= self.most:
            self.cache.lock(match)
            self[req.id] = (match.last_node, match.pages.size)
        else:
            self.refused += 1

    def release(self, request_id: str) -> bool:
        pin: tuple[Node, int] | None = self.pop(request_id, None)
        if pin is not None:
            self.cache.unlock(pin[0])
        return pin is not None
