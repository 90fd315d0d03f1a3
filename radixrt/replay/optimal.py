"""The offline optimum of the cache-only replay: Belady's rule on the radix tree's pages.

``simulate_optimal(prompts, page_size, capacity_pages)`` replays the same request stream as
``cache_sim.simulate`` under the same rules, except that it knows the future and evicts the best
pages rather than the least recently used ones. Its hit tokens bound what any eviction policy can
reach on that stream with that pool.

The model (shared with ``simulate``). Only whole pages count. A *page* is a prompt prefix of k
whole pages (its identity is its whole prefix, not just its own tokens, as in a radix tree);
request j *uses* every page its prompt starts with, its *path*. The cache is a set C of pages that
is closed under prefixes (a tree: a page is cached only with all the pages before it) and holds at
most ``capacity_pages`` pages. Request j hits the longest cached prefix of its prompt, which for a
prefix-closed C is ``|C ∩ path_j|`` pages, counted with C as it is when j arrives. Then the cache
becomes any prefix-closed C' ⊆ C ∪ path_j of at most ``capacity_pages`` pages: j's new pages may
be cached, old pages may be evicted (a leaf at a time, which reaches every prefix-closed subset).
Outputs are not cached. A request of more whole pages than the pool is served but not cached
(``uncacheable``, as in ``simulate``): for it C' ⊆ C. LRU's run is one such sequence of caches
(``simulate`` caches every page of each request that fits and evicts leaves), so the optimum hits
at least as much; so does every other online policy that could run in the engine.

The rule (admission and eviction). After request j, put every page of its path in the cache
(each page's next use becomes the next request that uses it), then, while the cache holds more
than ``capacity_pages`` pages, evict the page whose next use lies furthest in the future, a page
never used again counting as infinitely far. Pages of j itself compete like every other page, so
a new page that is needed later than everything else is dropped right away: the optimum need not
keep what it just computed (LRU must). Inserting before evicting lets the bound also drop pages
that j matched; the engine would hold them while j runs, but j has already had its hit, so this
changes no hit, only what stays. An uncacheable request only moves its matched pages' next uses.

Ties: evict the largest (next use, page id), page ids numbering distinct prefixes in the order
the stream first shows them. A request that uses a page uses every page before it, so a page's
next use is never later than its descendants', and a descendant's id is larger than its
ancestors': the page evicted is therefore always a leaf, and the cache stays a tree without
checking. Pages with the same finite next use lie on one path and go deepest first; ties among
pages never used again decide nothing.

Why nothing beats it. Drop the tree constraint and count a hit as ``|C ∩ path_j|``: that is
paging with bypass where each step asks for a set of pages at once, and Belady's exchange argument
carries over unchanged. Take an optimal schedule that agrees with this rule up to step j and keeps
page x instead of page y at step j, where y is needed no later than x; keeping y in x's place
until either is asked for (or x is dropped) loses no hit before y's next use, wins y's hit then
(when x is also asked for then, the two hits trade), and loses at most x's one hit afterwards. So
the rule is optimal for the relaxed problem, every schedule of the tree-constrained one is a
relaxed schedule with the same hits, and the rule's own schedule is a tree: it is optimal for
the constrained problem too. ``tests/replay/test_optimal.py`` checks this against an exhaustive
search on small streams.

Cost: one pass interns each prompt's pages in a dict keyed by (parent page id, page bytes), so
two prefixes get one id exactly when their tokens are equal (no hash is trusted). A backward pass
gives every use its next use; a forward pass keeps the cached pages in a heap keyed by
(next use, id), updated lazily: a page's next use only moves later while it is cached, and a
popped entry that no longer matches its page's current next use is skipped. O(P log P) for P
page uses; the Mooncake conversation trace (12k requests, ~290k page uses) takes about a second.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from radixrt.cache.ids import ID_DTYPE, as_ids
from radixrt.replay.cache_sim import CacheReplay

NEVER = sys.maxsize  # the next use of a page that no later request uses


@dataclass
class OptimalReplay(CacheReplay):
    """``CacheReplay`` plus the most pages the optimum's cache held after any request (never above
    the capacity). ``evicted_pages`` counts every page that left the cache, new pages of a request
    that the rule dropped at once included; ``evict_calls`` counts the requests after which any
    page left. The timing fields stay 0."""

    peak_pages: int = 0


def page_paths(prompts: Iterable[np.ndarray], page_size: int) -> tuple[list[list[int]], list[int]]:
    """Each prompt's whole pages as page ids, and each page's parent id (-1 for a first page).

    A page id stands for a whole prefix: two prompts' k-th pages get one id exactly when their
    first k pages are equal, token for token. Ids are numbered in order of first appearance, so a
    page's id is larger than its parent's."""
    if page_size < 1:
        raise ValueError(f"page_size must be a positive number of tokens, got {page_size}")
    page_bytes = page_size * ID_DTYPE.itemsize
    ids: dict[tuple[int, bytes], int] = {}
    parent_of: list[int] = []
    paths: list[list[int]] = []
    for tokens in prompts:
        arr = as_ids(tokens, "token ids")
        n = arr.size // page_size
        key = arr[: n * page_size].tobytes()
        path, parent = [], -1
        for off in range(0, n * page_bytes, page_bytes):
            k = (parent, key[off : off + page_bytes])
            pid = ids.get(k)
            if pid is None:
                pid = ids[k] = len(parent_of)
                parent_of.append(parent)
            path.append(pid)
            parent = pid
        paths.append(path)
    return paths, parent_of


def next_uses(paths: list[list[int]]) -> list[list[int]]:
    """For each request's path, the index of the next request that uses each of its pages
    (``NEVER`` if none): one backward pass."""
    last: dict[int, int] = {}
    out: list[list[int]] = [[]] * len(paths)
    for j in range(len(paths) - 1, -1, -1):
        path = paths[j]
        out[j] = [last.get(pid, NEVER) for pid in path]
        for pid in path:
            last[pid] = j
    return out


def simulate_optimal(prompts: Iterable[np.ndarray], page_size: int, capacity_pages: int | None) -> OptimalReplay:
    """Replay ``prompts`` with Belady's rule on a pool of ``capacity_pages`` pages (None: no
    limit) and return the hits it reaches (see the module docstring for the model and rules)."""
    if capacity_pages is not None and capacity_pages < 1:
        raise ValueError(f"capacity_pages must be at least one page (or None for no limit), got {capacity_pages}")
    paths, parent_of = page_paths(prompts, page_size)
    nexts = next_uses(paths)
    cap = NEVER if capacity_pages is None else capacity_pages
    n_ids = len(parent_of)
    bounded = cap < n_ids  # else every page fits and nothing is ever evicted: no heap to keep
    cached = bytearray(n_ids)
    children = [0] * n_ids  # cached children of each page: an evicted page must have none
    next_use = [NEVER] * n_ids  # current next use of each cached page
    heap: list[tuple[int, int]] = []  # (-next use, -id): the top is the page to evict
    push, pop = heapq.heappush, heapq.heappop
    size = 0
    r = OptimalReplay()
    for path, nxt in zip(paths, nexts):
        n = len(path)
        r.requests += 1
        r.tokens += n * page_size
        hit = 0
        while hit < n and cached[path[hit]]:
            hit += 1
        r.hit_tokens += hit * page_size
        if n > cap:
            r.uncacheable += 1
            n = hit  # served, not cached: only the matched pages stay, with their new next uses
        for k in range(n):
            pid, t = path[k], nxt[k]
            if bounded:
                next_use[pid] = t
                push(heap, (-t, -pid))
            if k >= hit:
                cached[pid] = 1
                if k:
                    children[path[k - 1]] += 1
        size += n - hit
        if size > cap:
            r.evict_calls += 1
            while size > cap:
                neg_t, neg_pid = pop(heap)
                pid = -neg_pid
                if not cached[pid] or next_use[pid] != -neg_t:
                    continue  # stale: evicted since, or used again since it was pushed
                assert children[pid] == 0, "the furthest-needed page is always a leaf"
                cached[pid] = 0
                parent = parent_of[pid]
                if parent >= 0:
                    children[parent] -= 1
                size -= 1
                r.evicted_pages += 1
        r.peak_pages = max(r.peak_pages, size)  # measured once the request is done: the bound may go over in between
    return r
