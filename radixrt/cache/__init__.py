"""Prefix cache and KV memory: the radix tree, the page allocator and the KV pool."""
from radixrt.cache.allocator import PageAllocator
from radixrt.cache.kv_pool import KVPool
from radixrt.cache.radix_cache import CacheEvent, MatchResult, Node, RadixCache

__all__ = ["CacheEvent", "KVPool", "MatchResult", "Node", "PageAllocator", "RadixCache"]
