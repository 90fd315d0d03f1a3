"""Radix caches for tests: a cache with its allocator, inserting a prompt, prompts that collide."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from radixrt.cache import PageAllocator, RadixCache


def make(page_size: int = 1, num_pages: int = 64) -> tuple[RadixCache, PageAllocator]:
    allocator = PageAllocator(num_pages)
    return RadixCache(page_size, allocator), allocator


def put(cache: RadixCache, allocator: PageAllocator, tokens, namespace=None) -> np.ndarray:
    pages = allocator.alloc(len(tokens) // cache.page_size)
    cached = cache.insert(tokens, pages, namespace)
    allocator.free(pages[: cached // cache.page_size])
    return pages


def token_streams(page_size: int):
    """Prompts built from a few page-sized pieces, so that prefixes collide often. Pieces 0 and 1
    differ only in their last token (a split inside a page); a ragged tail tests page alignment."""
    rng = np.random.default_rng(page_size)
    pieces = [rng.integers(0, 1000, page_size).tolist() for _ in range(4)]
    pieces.append(pieces[0][:-1] + [pieces[0][-1] + 1])
    return st.builds(
        lambda ids, tail: [t for i in ids for t in pieces[i]] + tail,
        st.lists(st.integers(0, len(pieces) - 1), max_size=6),
        st.lists(st.integers(0, 999), max_size=page_size - 1),
    )
