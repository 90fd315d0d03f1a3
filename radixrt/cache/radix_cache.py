"""A radix tree over token ids that maps prompt prefixes to KV cache pages.

Each edge holds a run of whole pages: its token ids and the physical page ids that hold their
K/V. A node's children are keyed by the tokens of their first page, so two children never share
a first page and a lookup is one dict probe per edge.

Keys are kept as the raw bytes of int64 token ids. Checking that a prompt continues along an edge
is then a single ``bytes.startswith`` (a memcmp); only on the one edge where the prompt diverges
does numpy locate the first differing token. No token is compared in a Python loop.

Eviction order is least recently used. Every match or insert is one tick of a logical clock and
stamps each node on its path with that tick, so a parent is never older than its children and
evicting leaves oldest-first frees the least recently used pages first. Only unlocked leaves can
go; they are kept in a ``SortedList`` by (tick, id), so evicting k leaves costs O(k log n) and
never scans the tree. ``evict(n)`` frees exactly ``n`` pages when that many are evictable: the
last leaf it reaches is trimmed from its tail rather than dropped whole.

All sizes count pages. Not thread-safe: one scheduler owns a cache.
"""
from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from sortedcontainers import SortedList

from radixrt.cache.allocator import PageAllocator, PageIds, as_page_ids

TOKEN_BYTES = 8  # token ids are stored as int64
_NO_PAGES = np.zeros(0, dtype=np.int64)
_NO_PAGES.flags.writeable = False


class Node:
    __slots__ = ("key", "pages", "children", "parent", "lock_ref", "tick", "id", "lru_entry", "namespace")

    def __init__(self, key: bytes, pages: PageIds, parent: Node | None, tick: int, id: int, lock_ref: int = 0):
        self.key = key
        self.pages = pages
        self.children: dict[bytes, Node] = {}
        self.parent = parent
        self.lock_ref = lock_ref
        self.tick = tick
        self.id = id
        self.lru_entry: tuple[int, int, Node] | None = None
        self.namespace: Hashable = None

    @property
    def tokens(self) -> np.ndarray:
        return np.frombuffer(self.key, dtype=np.int64)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def __repr__(self) -> str:
        return f"Node(id={self.id}, tokens={len(self.key) // TOKEN_BYTES}, pages={self.pages.size}, lock_ref={self.lock_ref})"


@dataclass(frozen=True, slots=True)
class MatchResult:
    pages: PageIds  # the cached prefix's page ids, in order (a copy the caller may keep)
    last_node: Node  # lock this to keep the prefix cached; a root when nothing matched
    length: int  # matched tokens, a multiple of page_size


def as_token_ids(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """A 1-D int64 array of token ids (zero-copy for an int64 array or CPU tensor)."""
    arr = np.asarray(tokens)
    if arr.dtype != np.int64:
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got an array of {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    return arr


class RadixCache:
    """Longest-prefix reuse of KV pages, with reference counts and LRU leaf eviction.

    The request path: ``m = match_prefix(prompt)``; ``lock(m.last_node)`` (before anything can
    evict); allocate pages for ``prompt[m.length:]`` and compute them; ``n = insert(tokens,
    pages)``; free your own pages ``pages[m.length // page_size : n // page_size]``, which
    duplicate what another request cached meanwhile; ``unlock(m.last_node)``.

    A namespace (a tenant, a LoRA id) gets its own tree: two namespaces never share a prefix.
    With an ``allocator``, evicted pages go back to it; without one they are simply dropped.
    """

    def __init__(self, page_size: int = 1, allocator: PageAllocator | None = None) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be a positive number of tokens, got {page_size}")
        self.page_size = page_size
        self.allocator = allocator
        self._page_bytes = page_size * TOKEN_BYTES
        self._ids = itertools.count()
        self._init_tree()

    def _init_tree(self) -> None:
        self._roots: dict[Hashable, Node] = {}
        self._root(None)
        self._lru: SortedList = SortedList()
        self._tick = 0
        self._evictable = 0
        self._protected = 0

    # ---- queries -------------------------------------------------------------------------

    def match_prefix(self, tokens: Sequence[int] | np.ndarray, namespace: Hashable = None) -> MatchResult:
        """The longest cached prefix of ``tokens`` in whole pages. Marks it as just used."""
        key = self._key(tokens)
        root = self._roots.get(namespace)
        if root is None:
            return MatchResult(_NO_PAGES, self._roots[None], 0)
        tick = self._next_tick()
        node, off, parts = root, 0, []
        while off < len(key):
            child = node.children.get(key[off : off + self._page_bytes])
            if child is None:
                break
            n = self._common_bytes(child.key, key, off)
            if n < len(child.key):
                child = self._split(child, n)
            self._touch(child, tick)
            parts.append(child.pages)
            node, off = child, off + n
        pages = np.concatenate(parts) if parts else _NO_PAGES
        return MatchResult(pages, node, off // TOKEN_BYTES)

    def evictable_size(self) -> int:
        """Pages in the tree that no request has locked."""
        return self._evictable

    def protected_size(self) -> int:
        """Pages in the tree locked by at least one request."""
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    def cached_pages(self) -> PageIds:
        """Every page the tree owns (a full walk: for checks and accounting, not the hot path)."""
        parts = [node.pages for node in self.nodes()]
        return np.concatenate(parts) if parts else _NO_PAGES

    def nodes(self):
        """Every non-root node, parents before children."""
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            if not node.is_root:
                yield node
            stack.extend(node.children.values())

    def namespaces(self) -> list[Hashable]:
        return list(self._roots)

    # ---- updates -------------------------------------------------------------------------

    def insert(self, tokens: Sequence[int] | np.ndarray, pages: Sequence[int] | np.ndarray, namespace: Hashable = None) -> int:
        """Cache ``tokens`` (whole pages; a partial last page is ignored) held in ``pages``.

        Returns how many leading tokens were cached already: those pages stay the tree's, and
        the caller's own pages for them are duplicates to free. The tree takes the rest.
        """
        key = self._key(tokens)
        pages = as_page_ids(pages)
        if pages.size != len(key) // self._page_bytes:
            raise ValueError(
                f"insert of {len(key) // TOKEN_BYTES} page-aligned tokens needs {len(key) // self._page_bytes} "
                f"page ids at page_size {self.page_size}, got {pages.size}"
            )
        tick = self._next_tick()
        node, off = self._root(namespace), 0
        while off < len(key):
            child = node.children.get(key[off : off + self._page_bytes])
            if child is None:
                self._add_leaf(node, key[off:], pages[off // self._page_bytes :], tick)
                break
            n = self._common_bytes(child.key, key, off)
            if n < len(child.key):
                child = self._split(child, n)
            self._touch(child, tick)
            node, off = child, off + n
        return off // TOKEN_BYTES

    def lock(self, node: Node) -> None:
        """Pin ``node`` and its ancestors: none of them can be evicted until ``unlock``."""
        self._check_live(node)
        if node.lru_entry is not None:
            self._lru_remove(node)
        while node.parent is not None:
            if node.lock_ref == 0:
                self._evictable -= node.pages.size
                self._protected += node.pages.size
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        self._check_live(node)
        if node.is_root:
            return
        if node.lock_ref <= 0:
            raise RuntimeError(f"unlock of {node}, which is not locked")
        leaf = node
        while node.parent is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += node.pages.size
                self._protected -= node.pages.size
            node = node.parent
        if leaf.lock_ref == 0 and not leaf.children:
            self._lru_add(leaf)

    def evict(self, num_pages: int) -> int:
        """Free ``num_pages`` least recently used unlocked pages, leaves first; returns how many
        were freed (fewer only when fewer are evictable)."""
        if num_pages < 0:
            raise ValueError(f"cannot evict a negative number of pages ({num_pages})")
        remaining = num_pages
        freed: list[PageIds] = []
        while remaining > 0 and self._lru:
            leaf = self._lru.pop(0)[2]
            leaf.lru_entry = None
            n = leaf.pages.size
            if n > remaining:
                keep = n - remaining
                freed.append(leaf.pages[keep:])
                leaf.pages = leaf.pages[:keep]
                leaf.key = leaf.key[: keep * self._page_bytes]
                self._evictable -= remaining
                remaining = 0
                self._lru_add(leaf)
                break
            freed.append(leaf.pages)
            remaining -= n
            self._evictable -= n
            self._remove_leaf(leaf)
        if freed and self.allocator is not None:
            self.allocator.free(np.concatenate(freed))
        return num_pages - remaining

    def reset(self) -> None:
        """Drop every cached prefix, returning its pages to the allocator."""
        if self._protected:
            raise RuntimeError(f"reset while {self._protected} cached pages are locked by running requests")
        self.evict(self.total_size())
        self._init_tree()

    # ---- internals -----------------------------------------------------------------------

    def _key(self, tokens: Sequence[int] | np.ndarray) -> bytes:
        arr = as_token_ids(tokens)
        return arr[: arr.size - arr.size % self.page_size].tobytes()

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick

    def _root(self, namespace: Hashable) -> Node:
        root = self._roots.get(namespace)
        if root is None:
            root = Node(b"", _NO_PAGES, None, 0, next(self._ids))
            root.namespace = namespace
            self._roots[namespace] = root
        return root

    def _common_bytes(self, edge: bytes, key: bytes, off: int) -> int:
        """Bytes of ``edge`` that ``key[off:]`` repeats, rounded down to whole pages."""
        if key.startswith(edge, off):
            return len(edge)
        m = min(len(edge), len(key) - off)
        if m < len(edge) and edge.startswith(key[off:]):
            return m
        a = np.frombuffer(edge, dtype=np.int64, count=m // TOKEN_BYTES)
        b = np.frombuffer(key, dtype=np.int64, count=m // TOKEN_BYTES, offset=off)
        first = int(np.argmax(a != b))
        return first // self.page_size * self._page_bytes

    def _split(self, child: Node, n: int) -> Node:
        """Cut ``child``'s edge after ``n`` bytes; the new node is the head, ``child`` keeps the
        tail (so a request holding ``child`` still holds the deepest node of its path)."""
        p = n // self._page_bytes
        head = Node(child.key[:n], child.pages[:p], child.parent, child.tick, next(self._ids), child.lock_ref)
        child.parent.children[child.key[: self._page_bytes]] = head
        child.key, child.pages, child.parent = child.key[n:], child.pages[p:], head
        head.children[child.key[: self._page_bytes]] = child
        return head

    def _add_leaf(self, parent: Node, key: bytes, pages: PageIds, tick: int) -> None:
        if self.allocator is not None:
            self.allocator.check_allocated(pages)
        if parent.lru_entry is not None:
            self._lru_remove(parent)
        leaf = Node(key, pages.copy(), parent, tick, next(self._ids))
        parent.children[key[: self._page_bytes]] = leaf
        self._evictable += pages.size
        self._lru_add(leaf)

    def _remove_leaf(self, leaf: Node) -> None:
        parent = leaf.parent
        del parent.children[leaf.key[: self._page_bytes]]
        leaf.parent = None
        leaf.children = None  # marks it evicted
        if parent.children:
            return
        if parent.is_root:
            if parent.namespace is not None:
                del self._roots[parent.namespace]
        elif parent.lock_ref == 0:
            self._lru_add(parent)

    def _touch(self, node: Node, tick: int) -> None:
        if node.lru_entry is None:
            node.tick = tick
        else:
            self._lru_remove(node)
            node.tick = tick
            self._lru_add(node)

    def _lru_add(self, node: Node) -> None:
        node.lru_entry = (node.tick, node.id, node)
        self._lru.add(node.lru_entry)

    def _lru_remove(self, node: Node) -> None:
        self._lru.remove(node.lru_entry)
        node.lru_entry = None

    @staticmethod
    def _check_live(node: Node) -> None:
        if node.children is None:
            raise RuntimeError(f"{node} was evicted: match the prefix again (lock right after matching)")
