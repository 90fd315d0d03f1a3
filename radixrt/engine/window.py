"""Attention sinks and a sliding window (StreamingLLM) for one request, in whole pages.

A request with ``SamplingParams(kv_window=W, sink_tokens=S)`` computes as any other until its
sequence outgrows the window. Then, before each chunk, the pages of its oldest window tokens are
dropped whole, so that at least W tokens stay before the chunk, and its page list becomes

    [private pages: the S sinks, then the last tokens of the newest dropped page] + [window pages]

a contiguous sequence for the kernels, which need no change. Positions follow StreamingLLM's rule
(positions within the cache) by keeping relative distances: a window token keeps the K computed at
its own position, and the query comes at its own absolute position, so distances inside the window
are the true ones; the sinks are *recomputed* (their S tokens run again, attending to each other
only) at the positions just before the window's first kept token, so that they sit, by distance,
right before the window as StreamingLLM's cache places them. RoPE depends only on distances, so
attention scores equal those of StreamingLLM's cache positions, and the recomputation gives exact
K/V in any KV format (no re-rotation of quantized values). The tokens copied into the private
page's tail keep their own positions, being contiguous with the window.

A query thus sees the sinks and between W and W + page - 1 earlier tokens when decoding, up to
W + :meth:`KVWindow.chunk` + page - 1 in a prefill chunk. Pages the radix cache holds for others
stay there: they are released by the request (its lock) once the window has passed them all; the
request's own dropped pages are freed at once. A request that has slid adds nothing to the cache
when it ends (its K/V are no longer a prefix's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_CHUNK_FRACTION = 4
"""A windowed request prefills at most ``kv_window / 4`` tokens a step (at least a page): the
window a prompt token sees is then at most a quarter wider than asked for."""


@dataclass
class KVWindow:
    sinks: int
    window: int
    page_size: int
    start: int = 0  # absolute index of the first token of the oldest kept window page; 0 until it slides
    private: int = 0  # pages at the front of the request's pages holding the sinks and a tail, once slid

    @property
    def slid(self) -> bool:
        return self.start > 0

    @property
    def sink_pages(self) -> int:
        return -(-self.sinks // self.page_size)

    @property
    def shift(self) -> int:
        """A token's absolute position minus its index in the request's page list."""
        return self.start - self.private * self.page_size

    @property
    def chunk(self) -> int:
        """The most tokens a prefill step feeds."""
        return max(self.page_size, self.window // WINDOW_CHUNK_FRACTION // self.page_size * self.page_size)

    @property
    def tail(self) -> int:
        """Tokens copied after the sinks into the private pages, from just before the window."""
        return self.sink_pages * self.page_size - self.sinks

    def tree_pages(self, in_tree: int) -> int:
        """How many of the window's first pages are the cache's (its first ``in_tree`` tokens')."""
        return max(0, (in_tree - self.start) // self.page_size)

    def next_start(self, computed: int) -> int:
        """Where the kept window begins for a chunk that starts at ``computed``: pages are dropped
        while at least ``window`` tokens stay before it; never before the sinks' pages."""
        drop = max(0, (computed - self.window - self.start) // self.page_size)
        start = self.start + drop * self.page_size
        return start if start >= self.sink_pages * self.page_size else self.start

    def match_limit(self) -> int:
        """Leading tokens whose K/V a windowed request computes as a dense one does (none of its
        chunks before them has slid), so that the cache may serve them."""
        return self.window + self.page_size


def window_pages(sinks: int, window: int, page_size: int) -> int:
    """The most pages a windowed request holds at once: its private pages, the window, the page
    being filled and a prefill chunk."""
    w = KVWindow(sinks, window, page_size)
    return w.sink_pages + -(-(window + w.chunk) // page_size) + 2


def check_window(sinks: int, window: int | None, page_size: int, kv_tokens: int) -> None:
    """``ValueError`` naming what the engine cannot do with this window (the parameters' own
    ranges are ``SamplingParams.validate``'s)."""
    if window is None:
        return
    if window < page_size:
        raise ValueError(f"kv_window must be at least a page ({page_size} tokens), got {window}")
    need = window_pages(sinks, window, page_size)
    if need * page_size > kv_tokens:
        raise ValueError(
            f"kv_window {window} with sink_tokens {sinks} needs up to {need * page_size} tokens of KV cache, "
            f"and it holds {kv_tokens}"
        )


@dataclass(frozen=True)
class Slide:
    """What a request's window does before its next chunk: the new page list, the pages it no
    longer needs (``free``: its own; the cache's stay cached), and the pool slots to copy into its
    private pages (the tail)."""

    pages: np.ndarray
    free: np.ndarray
    copy_from: np.ndarray
    copy_to: np.ndarray


def plan_slide(w: KVWindow, pages: np.ndarray, in_tree: int, start: int, private: np.ndarray) -> Slide:
    """The slide to ``start`` of a request holding ``pages`` (its first ``in_tree`` tokens' pages
    are the cache's), given its ``private`` pages (new ones on the first slide)."""
    ps = w.page_size
    dropped = pages[w.private : w.private + (start - w.start) // ps]
    kept = pages[w.private + dropped.size :]
    at = w.sinks + np.arange(w.tail)  # empty without a tail (the sinks fill their pages)
    copy_from = dropped[-1] * ps + ps - w.tail + np.arange(w.tail)
    copy_to = private[at // ps] * ps + at % ps
    free = dropped[min(dropped.size, w.tree_pages(in_tree)) :]
    return Slide(np.concatenate([private, kept]), free, copy_from.astype(np.int64), copy_to.astype(np.int64))


def own_pages(w: KVWindow, pages: np.ndarray, in_tree: int) -> np.ndarray:
    """The pages a request that has slid may free: all but the cache's still in its window."""
    return np.concatenate([pages[: w.private], pages[w.private + w.tree_pages(in_tree) :]])
