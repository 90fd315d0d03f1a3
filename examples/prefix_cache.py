"""The radix prefix cache on its own: two agent turns that share a system prompt.

Run: .venv/bin/python examples/prefix_cache.py
"""

import numpy as np

from radixrt.cache import KVPool, PageAllocator, RadixCache

PAGE_SIZE = 16
pool = KVPool(num_layers=30, kv_heads=3, head_dim=64, page_size=PAGE_SIZE, max_bytes=64 * 2**20)
allocator = PageAllocator(pool.num_pages)
cache = RadixCache(page_size=PAGE_SIZE, allocator=allocator)
print(pool, f"{pool.bytes_per_token} bytes per token")

rng = np.random.default_rng(0)
system_prompt = rng.integers(0, 49152, 1000, dtype=np.int32)


def serve(prompt: np.ndarray) -> None:
    match = cache.match_prefix(prompt)
    cache.lock(match)  # right after matching: nothing may evict the prefix while this request runs
    need = -(-len(prompt) // PAGE_SIZE) - match.pages.size  # pages for the uncached tail
    own = allocator.alloc(need)
    if own is None:
        cache.evict(need - allocator.available())
        own = allocator.alloc(need)
    # ... the model would compute K/V for prompt[match.length:] into pool.k / pool.v here ...
    full_pages = len(prompt) // PAGE_SIZE
    pages = np.concatenate([match.pages, own])
    cache.commit(prompt, pages[:full_pages], held=match.length)  # frees duplicates of what was cached meanwhile
    allocator.free(pages[full_pages:])  # a partial last page is not cached
    cache.unlock(match.last_node)
    print(
        f"prompt of {len(prompt):5} tokens: {match.length:5} served from cache, {len(prompt) - match.length:5} computed"
    )


for question in range(3):
    serve(np.concatenate([system_prompt, rng.integers(0, 49152, 200, dtype=np.int32)]))
print(f"cached pages: {cache.total_size()}, free pages: {allocator.available()} of {allocator.num_pages}")
