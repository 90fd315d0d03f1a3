"""Prefix cache and KV memory: the radix tree, the page allocator and the KV pool."""

from radixrt.cache.allocator import PageAllocator
from radixrt.cache.kv_pool import KVPool
from radixrt.cache.node import CacheEvent, MatchResult, Node
from radixrt.cache.radix_cache import RadixCache

__all__ = ["CacheEvent", "KVPool", "MatchResult", "Node", "PageAllocator", "RadixCache"]
