"""The radix tree's records: a node (an edge of whole pages and what hangs below it), a match, a
change of what is cached, and the most reused prefixes as the cache page shows them."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from radixrt.cache.ids import ID_DTYPE, IdArray

TOKEN_BYTES = ID_DTYPE.itemsize


class Tier(IntEnum):
    """Where a node's K/V is: the fastest tier that holds it. Along a path from the root tiers
    never get faster (a device node's parent is on the device), so a match is a device prefix
    followed by pages to load."""

    DEVICE = 0
    HOST = 1
    DISK = 2


class Node:
    __slots__ = (
        "key",
        "pages",
        "children",
        "parent",
        "lock_ref",
        "tick",
        "prio",
        "promoted",
        "ids",
        "id",
        "lru_entry",
        "host_entry",
        "disk_entry",
        "namespace",
        "version",
        "hits",
        "tier",
        "retain_until",
        "retain_ttl",
        "disk",
    )

    def __init__(self, key: bytes, pages: IdArray, parent: Node | None, tick: int, id: int, lock_ref: int = 0):
        self.key = key
        self.pages = pages
        self.children: dict[bytes, Node] = {}
        self.parent = parent
        self.lock_ref = lock_ref
        self.tick = tick  # the logical time of the last match or insert through this node
        self.prio: float = tick  # the eviction policy's key: smaller goes first (the tick under LRU)
        self.promoted = False  # reused while cached, or cached again soon after an eviction (policy.py)
        self.ids: list[int] | None = None  # each page's identity, when the policy keeps a ghost list
        self.id = id
        self.lru_entry: tuple[float, int, Node] | None = None  # in the device's eviction order
        self.host_entry: tuple[float, int, Node] | None = None  # in the host tier's
        self.disk_entry: tuple[float, int, Node] | None = None  # in the disk tier's
        self.namespace: Hashable = None
        self.version = 0  # bumped when evict trims or removes the node: its older matches are stale
        self.hits = 0  # requests that reused this node's prefix (record_hit)
        self.retain_until = 0.0  # retained until then (wall time), renewed by retain_ttl on each match
        self.retain_ttl = 0.0
        self.tier = Tier.DEVICE  # ``pages`` are device page ids (DEVICE), host slots (HOST) or empty (DISK)
        self.disk: list[bytes] | None = None  # each page's disk key, when the disk holds a copy

    @property
    def tokens(self) -> np.ndarray:
        return np.frombuffer(self.key, dtype=ID_DTYPE)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def __repr__(self) -> str:
        tokens = len(self.key) // TOKEN_BYTES
        tier = self.tier.name.lower()
        return f"Node(id={self.id}, tokens={tokens}, pages={self.pages.size} on {tier}, lock_ref={self.lock_ref})"

    @property
    def num_pages(self) -> int:
        return self.pages.size if self.tier is not Tier.DISK else len(self.disk)


class MatchResult(NamedTuple):
    pages: IdArray  # the cached prefix's page ids, in order (a copy the caller may keep)
    last_node: Node  # what lock(match) pins and unlock(node) releases; a root when nothing matched
    length: int  # matched tokens, a multiple of page_size
    version: int  # last_node.version at match time: lock refuses the match once it changes
    loaded: tuple[int, int] = (0, 0)  # tokens of ``length`` loaded from the host and from disk by this match


class CacheEvent(NamedTuple):
    """The prefix ``tokens`` (raw int32 bytes, whole pages) was cached (``stored``: its tokens
    from ``start`` on are new to the tree, or moved to ``tier``) or dropped from ``start`` on
    (evicted from every tier)."""

    stored: bool
    namespace: Hashable
    tokens: bytes
    start: int
    tier: int = 0  # of a stored event: where the pages from ``start`` on are now (a ``Tier``)


def top_prefixes(nodes: Iterable[Node], k: int = 8, head_tokens: int = 32) -> list[dict]:
    """The ``k`` most reused cached prefixes: each one's first ``head_tokens`` token ids, its
    length in tokens and how many requests reused it. A prefix whose longer continuation was
    reused as often stands aside for it."""
    candidates = [n for n in nodes if not n.is_root and n.hits and all(c.hits < n.hits for c in n.children.values())]
    best = sorted(candidates, key=lambda n: (-n.hits, n.id))[:k]
    result = []
    for node in best:
        path, length = [], 0
        at = node
        while not at.is_root:
            path.append(at.key)
            length += len(at.key) // TOKEN_BYTES
            at = at.parent
        head = np.frombuffer(b"".join(reversed(path))[: head_tokens * TOKEN_BYTES], dtype=ID_DTYPE)
        namespace = at.namespace  # ``at`` is the root now: its tree's namespace
        result.append(
            {
                "tokens": head.tolist(),
                "length": length,
                "hits": node.hits,
                "namespace": None if namespace is None else str(namespace),
            }
        )
    return result
