"""Continuous batching over the radix cache: who runs this step, with how many tokens, on which pages.

Each step first gives every running request the pages for its next tokens (one for decoding, a
chunk for a prompt still being prefilled), evicting cached prefixes and then retracting requests
when memory runs out. The request retracted is always the newest (the least work lost; a request
that cannot grow when it is itself the newest steps back), so a newcomer never pushes out an older
request. Then it admits waiting requests while the step's token budget and free + evictable pages
allow, keeping a page free for each decoding request's next token. Up to ``LPM_MAX_WAITING``
waiting requests are ranked by cached prefix length (SGLang's longest-prefix-match) with an age
credit so that nobody starves; a longer queue is taken in arrival order, since ranking it would
cost more than it saves. Between tenants that order is interleaved: the next request comes from the
tenant with the fewest running (counting those admitted this step), so one tenant's queue of many
never holds back another's request for more than a slot. A waiting request whose prompt shares a
long uncached prefix with one admitted in the same step waits a step, then finds that prefix in the
cache: a prefix shared by a burst of requests is computed once. A retracted request keeps what it
generated, gives its computed K/V to the cache and is re-queued; it is recomputed mostly from the
cache.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from radixrt.cache import PageAllocator, RadixCache
from radixrt.engine.request import Request, State
from radixrt.engine.window import KVWindow, own_pages, plan_slide

AGE_CREDIT_TOKENS_PER_S = 1000.0  # a request waiting 1 s ranks as if 1000 more of its tokens were cached
SHARED_PREFIX_WAIT = 32  # wait a step rather than compute this many tokens that a request admitted now computes
LPM_MAX_WAITING = 128  # past this many waiting requests, admit in arrival order


@dataclass
class SchedulerStats:
    prompt_tokens: int = 0  # prompt tokens of admitted requests (first admission)
    cached_tokens: int = 0  # of those, served from the radix cache
    host_hit_tokens: int = 0  # of those, loaded back from the host tier
    disk_hit_tokens: int = 0  # of those, loaded back from the disk tier
    computed_tokens: int = 0  # prompt and re-prefill tokens computed (not decode steps)
    decode_tokens: int = 0
    retractions: int = 0
    evicted_pages: int = 0


class Scheduler:
    def __init__(
        self,
        cache: RadixCache,
        allocator: PageAllocator,
        *,
        max_batch_tokens: int,
        chunk_size: int,
        max_running: int,
        enable_cache: bool = True,
        copy_slots: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        self.cache, self.allocator = cache, allocator
        self.copy_slots = copy_slots  # K/V from pool slots to others, every layer (a window's tail)
        self.sink_refresh: list[Request] = []  # windows that slid this step: their sinks are computed again
        self.page_size = cache.page_size
        self.max_batch_tokens, self.chunk_size, self.max_running = max_batch_tokens, chunk_size, max_running
        self.enable_cache = enable_cache
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self.failed: list[Request] = []  # failed while scheduling, for the engine to report

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    # ---- one step --------------------------------------------------------------------------

    def schedule(self) -> list[tuple[Request, int]]:
        """The requests that run this step and how many new tokens each feeds."""
        batch, budget = [], self.max_batch_tokens
        self.sink_refresh = []
        for req in list(self.running):
            if req.state is not State.RUNNING or budget <= 0 or req.computed == req.length:
                continue  # (all computed: a step in flight has ended its prompt, its last token or both)
            if req.pending and req.num_output >= req.max_new_tokens:
                continue  # its last token is on the device: it ends when that step is collected
            n = min(req.length - req.computed, budget, self._chunk(req))
            if req.window is not None:
                self._slide(req)
            if not self._grow(req, req.computed + n - req.kv_shift):
                continue  # it stepped back or failed
            batch.append((req, n))
            budget -= n
        batch = [(r, n) for r, n in batch if r.state is State.RUNNING]  # drop any retracted meanwhile
        self.sink_refresh = [r for r in self.sink_refresh if r.state is State.RUNNING and r.window.slid]
        budget = self.max_batch_tokens - sum(n for _, n in batch)
        if budget <= 0 or len(self.running) >= self.max_running or not self.waiting:
            return batch
        admitted_now = RadixCache(self.page_size)  # prompts admitted this step, without pages
        waited = 0
        for req, cached in self._by_priority():
            if budget <= 0 or len(self.running) >= self.max_running or waited > self.max_running:
                break
            if self.enable_cache and self._shares_uncached(admitted_now, req, cached):
                waited += 1
                continue
            n = self._admit(req, budget)
            if n == 0:
                break
            batch.append((req, n))
            budget -= n
            prompt = req.tokens[: req.match_limit]
            whole = len(prompt) // self.page_size
            admitted_now.insert(prompt[: whole * self.page_size], np.zeros(whole, dtype=np.int32), req.namespace)
        return batch

    def progress(self, req: Request, n: int) -> None:
        """``n`` more tokens of ``req`` have K/V now; prompt tokens go to the cache at once, so
        that others share them before this request finishes."""
        if req.computed < req.prompt_len:
            self.stats.computed_tokens += n
        else:
            self.stats.decode_tokens += n
        req.computed += n
        slid = req.window is not None and req.window.slid
        if self.enable_cache and req.computed - n < req.prompt_len and not slid:
            self._cache_progress(req)

    def release(self, req: Request) -> None:
        """Give a request's computed K/V to the cache (whole pages), free the rest, unpin. A window
        that has slid gives nothing: its K/V are no prefix's."""
        if req.window is not None and req.window.slid:
            w = req.window
            self.allocator.free(own_pages(w, req.pages, req.in_tree))
            if req.node is not None:
                self.cache.unlock(req.node)
            req.window = KVWindow(w.sinks, w.window, w.page_size)  # computed again from the start, if at all
        elif req.node is not None:
            aligned = req.computed // self.page_size
            self.cache.commit(req.tokens[: aligned * self.page_size], req.pages[:aligned], req.in_tree, req.namespace)
            self.allocator.free(req.pages[aligned:])
            self.cache.unlock(req.node)
        else:
            self.allocator.free(req.pages)
        req.pages, req.node, req.in_tree = req.pages[:0], None, 0

    def remove(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
            self.release(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def alloc(self, n: int, reserve: int = 0) -> np.ndarray | None:
        """``n`` pages, evicting cached prefixes if needed, keeping ``reserve`` pages obtainable."""
        short = n + reserve - self.allocator.available()
        if short > 0:
            if short > self.cache.evictable_size():
                return None
            self.stats.evicted_pages += self.cache.evict(short)
        return self.allocator.alloc(n)

    # ---- internals -------------------------------------------------------------------------

    def _by_priority(self) -> Iterator[tuple[Request, int | None]]:
        """Waiting requests with their cached prefix lengths (None where not looked up), best
        first. Looking up does not touch the tree: a request not admitted changes nothing."""
        waiting = [r for r in self.waiting if not r.pending]  # retracted while its token was on the device
        if not self.enable_cache or len(waiting) > LPM_MAX_WAITING:
            ranked = [(req, None) for req in sorted(waiting, key=lambda r: r.arrival)]
        else:
            now = time.perf_counter()
            looked_up = [
                (req, self.cache.prefix_length(req.tokens[: req.match_limit], req.namespace)) for req in waiting
            ]
            ranked = sorted(
                looked_up, key=lambda rc: rc[1] + AGE_CREDIT_TOKENS_PER_S * (now - rc[0].arrival), reverse=True
            )
        return _fair(ranked, Counter(r.tenant for r in self.running))

    def _shares_uncached(self, admitted_now: RadixCache, req: Request, cached: int | None) -> bool:
        """Whether ``req`` would compute a prefix that a request admitted this step computes too."""
        prompt = req.tokens[: req.match_limit]
        shared = admitted_now.prefix_length(prompt, req.namespace)
        if shared < SHARED_PREFIX_WAIT:
            return False
        if cached is None:
            cached = self.cache.prefix_length(prompt, req.namespace)
        return shared >= cached + SHARED_PREFIX_WAIT

    def _admit(self, req: Request, budget: int) -> int:
        """Match, pin and give pages to ``req``'s first chunk; 0 when memory does not allow."""
        if self.enable_cache:
            m = self.cache.match_prefix(req.tokens[: req.match_limit], req.namespace)
            self.cache.lock(m)
            node, prefix_pages, matched = m.last_node, m.pages, m.length
        else:
            node, prefix_pages, matched = None, req.pages[:0], 0
        n = min(req.length - matched, budget, self._chunk(req))
        reserve = sum(1 for r in self.running if r.computed >= r.prompt_len)  # a page each for decoders' next tokens
        own = self.alloc(self.pages_for(matched + n) - prefix_pages.size, reserve)
        if own is None:
            if node is not None:
                self.cache.unlock(node)
            return 0
        if req.retractions == 0:
            self.stats.prompt_tokens += req.prompt_len
            self.stats.cached_tokens += min(matched, req.prompt_len)
            req.cached_tokens = matched
            if self.enable_cache:
                self.cache.record_hit(m)
                self.stats.host_hit_tokens += m.loaded[0]
                self.stats.disk_hit_tokens += m.loaded[1]
        req.pages, req.node, req.in_tree, req.computed = np.concatenate([prefix_pages, own]), node, matched, matched
        req.state = State.RUNNING
        self.waiting.remove(req)
        self.running.append(req)
        return n

    def _chunk(self, req: Request) -> int:
        return self.chunk_size if req.window is None else min(self.chunk_size, req.window.chunk)

    def _slide(self, req: Request) -> None:
        """Drop the pages of ``req``'s window that its next chunk need not see (engine/window.py):
        its own are freed, the cache's lock released once the window has passed them all. No
        page for the sinks now leaves the window wider this step."""
        w = req.window
        start = w.next_start(req.computed)
        if start <= w.start:
            return
        private = req.pages[: w.private] if w.slid else self.alloc(w.sink_pages)
        if private is None:
            return
        slide = plan_slide(w, req.pages, req.in_tree, start, private)
        if slide.copy_from.size:
            self.copy_slots(slide.copy_from, slide.copy_to)
        self.allocator.free(slide.free)
        req.pages, w.start, w.private = slide.pages, start, private.size
        if req.node is not None and start >= req.in_tree:
            self.cache.unlock(req.node)
            req.node, req.in_tree = None, 0
        if w.sinks:
            self.sink_refresh.append(req)

    def _grow(self, req: Request, tokens: int) -> bool:
        """Pages for ``req``'s first ``tokens`` tokens: evict, then retract the newest request
        (``req`` itself when it is the newest), until they fit."""
        need = self.pages_for(tokens) - req.pages.size
        while need > 0:
            own = self.alloc(need, 0)
            if own is not None:
                req.pages = np.concatenate([req.pages, own])
                return True
            victim = max(self.running, key=lambda r: r.arrival)
            if victim is req and len(self.running) == 1:
                req.state, req.finish_reason = State.FAILED, "error"
                pages = self.allocator.num_pages
                req.error = f"out of KV cache memory: {tokens} tokens need more than the {pages} pages of the pool"
                self.failed.append(req)
                self.remove(req)
                return False
            self._retract(victim)
            if victim is req:
                return False
        return True

    def _retract(self, req: Request) -> None:
        self.running.remove(req)
        self.release(req)
        req.computed, req.state = 0, State.WAITING
        req.prompt_logprobs.clear()  # computed again from where the cache stops short of them
        req.next_logprobs = None
        req.retractions += 1
        self.stats.retractions += 1
        self.waiting.append(req)

    def _cache_progress(self, req: Request) -> None:
        aligned = req.computed // self.page_size
        if aligned * self.page_size <= req.in_tree:
            return
        done = req.tokens[: aligned * self.page_size]
        self.cache.commit(done, req.pages[:aligned], req.in_tree, req.namespace)
        m = self.cache.match_prefix(done, req.namespace)  # the tree's pages for what is done
        self.cache.lock(m)
        self.cache.unlock(req.node)
        req.node, req.in_tree = m.last_node, m.length
        req.pages = np.concatenate([m.pages, req.pages[aligned:]])


def _fair(ranked: list[tuple[Request, int | None]], running: Counter) -> Iterator[tuple[Request, int | None]]:
    """``ranked`` interleaved between tenants: next, the best of the tenant with the fewest running
    plus handed out so far (each one handed out counts as admitted); ties go to the better ranked."""
    queues: dict = {}
    for position, rc in enumerate(ranked):
        queues.setdefault(rc[0].tenant, deque()).append((position, rc))
    if len(queues) <= 1:
        yield from ranked
        return
    heap = [(running[tenant], queue[0][0], tenant) for tenant, queue in queues.items()]
    heapq.heapify(heap)
    while heap:
        count, _, tenant = heapq.heappop(heap)
        queue = queues[tenant]
        yield queue.popleft()[1]
        if queue:
            heapq.heappush(heap, (count + 1, queue[0][0], tenant))
