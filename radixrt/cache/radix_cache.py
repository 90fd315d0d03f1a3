"""A radix tree over token ids that maps prompt prefixes to KV cache pages.

Each edge holds a run of whole pages: its token ids and the physical page ids that hold their
K/V. A node's children are keyed by the tokens of their first page, so two children never share
a first page and a lookup is one dict probe per edge.

Keys are kept as the raw bytes of int32 token ids. Checking that a prompt continues along an edge
is then a single ``bytes.startswith`` (a memcmp); only on the one edge where the prompt diverges
does numpy locate the first differing token. No token is compared in a Python loop.

Every match or insert is one tick of a logical clock and stamps each node on its path with that
tick. The eviction policy (``policy.py``, chosen by name: ``"lru"`` or ``"adaptive"``) turns it
into the node's priority, and eviction takes unlocked leaves smallest priority first: under LRU
the priority is the tick, a parent is never older than its children, and the least recently used
pages go first. Whatever the keys, only leaves are candidates, so a parent never goes before its
children. The adaptive policy may cache a new edge as several nodes, one per run of pages that
share a key, and remembers the identities of evicted pages (a hash chain over each page's prefix,
kept per node in ``Node.ids``). ``evict(n)`` frees exactly ``n`` pages when that many are
evictable: the last leaf it reaches is trimmed from its tail rather than dropped whole. Each node
carries a ``version`` that trimming or evicting it bumps, and a ``MatchResult`` records it, so
``lock(match)`` refuses a match whose pages went back to the allocator in between (they may
already have been handed out again). A split is harmless: the deepest node keeps its identity and
every matched page stays in the tree.

Candidate leaves are kept lazily (``lru.py``), so that the hot path (match, insert, lock,
unlock) never sorts; ``evict`` re-checks each candidate it pops.

Setting ``events`` to a list makes the tree record what it caches and drops (``CacheEvent``s),
so that another process can keep an exact copy of what is cached: a router that routes each
request to the worker holding most of its prefix. The copy applies ``stored`` events with
``insert`` and the others with ``forget``.

With ``tiers`` (``LowerTiers``: a host pool and a disk below the device), a page the device
evicts moves down instead of vanishing, and a match that reaches into a lower tier loads those
pages back (``tiering.py``). Each tier evicts its own leaves, in the order of the same priorities.

All sizes count pages; sizes without a tier count the device's. Not thread-safe: one scheduler
owns a cache.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from radixrt.cache.allocator import PageAllocator
from radixrt.cache.ids import ID_DTYPE, IdArray, as_ids
from radixrt.cache.lru import LruLeaves
from radixrt.cache.node import TOKEN_BYTES, CacheEvent, MatchResult, Node, Tier, top_prefixes
from radixrt.cache.policy import EvictionPolicy, make_policy, namespace_seed
from radixrt.cache.retention import Retention
from radixrt.cache.tiering import NO_PAGES as _NO_PAGES
from radixrt.cache.tiering import Tiering
from radixrt.cache.tiers import LowerTiers


class RadixCache(Tiering, Retention):
    """Longest-prefix reuse of KV pages, with reference counts and leaf eviction by ``policy``.

    The request path: ``m = match_prefix(prompt)``; ``lock(m)`` right away (before anything can
    evict); allocate pages for ``prompt[m.length:]`` and compute them; ``commit(prompt, pages,
    held=m.length)``, which caches them and frees those of your pages that duplicate what another
    request cached meanwhile; ``unlock(m.last_node)``. Schedulers ranking waiting requests use
    ``prefix_length``, which leaves the tree as it is.

    A namespace (a tenant, a LoRA id) gets its own tree: two namespaces never share a prefix.
    With an ``allocator``, evicted pages go back to it; without one they are simply dropped.
    ``policy`` is ``"lru"`` or ``"adaptive"`` (which needs the allocator: it is sized by the pages
    the tiers hold, ``held_pages``), or an ``EvictionPolicy``.
    """

    def __init__(
        self,
        page_size: int = 1,
        allocator: PageAllocator | None = None,
        tiers: LowerTiers | None = None,
        policy: str | EvictionPolicy = "lru",
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be a positive number of tokens, got {page_size}")
        if tiers is not None and allocator is None:
            raise ValueError("lower tiers load pages back into the device, so the cache needs an allocator")
        self.page_size = page_size
        self.allocator = allocator
        self.tiers = tiers
        self.policy = make_policy(policy, self.held_pages())
        self._page_bytes = page_size * TOKEN_BYTES
        self._ids = itertools.count()
        self.events: list[CacheEvent] | None = None  # a list records CacheEvents (see the module docstring)
        self._init_tree()

    def _init_tree(self) -> None:
        self._roots: dict[Hashable, Node] = {}
        self._root(None)
        self._lru = LruLeaves()
        self._tick = 0
        self._evictable = 0
        self._protected = 0
        self._retaining = False  # whether any node was ever retained (the hot path skips retention until then)

    # ---- queries -------------------------------------------------------------------------

    def match_prefix(self, tokens: Sequence[int] | np.ndarray, namespace: Hashable = None) -> MatchResult:
        """The longest cached prefix of ``tokens`` in whole pages, its pages loaded into the device
        from lower tiers as far as the device has room. Marks it as just used."""
        key = self._key(tokens)
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[None]  # nothing cached in that namespace; locking a root is a no-op
            return MatchResult(_NO_PAGES, root, 0, root.version)
        path: list[Node] = []
        self._walk(root, key, path)
        if self._retaining:
            self._renew(path)
        loaded = self._load(root, path) if path and path[-1].tier is not Tier.DEVICE else (0, 0)
        if len(path) > 1:
            pages = np.concatenate([n.pages for n in path])
        else:
            pages = path[0].pages.copy() if path else _NO_PAGES
        node = path[-1] if path else root
        return MatchResult(pages, node, pages.size * self.page_size, node.version, loaded)

    def prefix_length(self, tokens: Sequence[int] | np.ndarray, namespace: Hashable = None) -> int:
        """The length ``match_prefix`` would return, read-only: no edge is split and no LRU tick
        refreshed, so a scheduler can rank every waiting request each step without disturbing the
        tree for the ones it does not admit."""
        root = self._roots.get(namespace)
        if root is None:
            return 0
        return self._walk(root, self._key(tokens), None, touch=False) // TOKEN_BYTES

    def evictable_size(self) -> int:
        """Device pages in the tree that no request has locked."""
        return self._evictable

    def protected_size(self) -> int:
        """Pages in the tree locked by at least one request."""
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    def cached_pages(self) -> IdArray:
        """Every device page the tree owns (a full walk: for checks and accounting, not the hot path)."""
        parts = [node.pages for node in self.nodes() if node.tier is Tier.DEVICE]
        return np.concatenate(parts) if parts else _NO_PAGES

    def nodes(self, namespaces: Iterable[Hashable] | None = None):
        """Every non-root node (of ``namespaces`` only, when given), parents before children."""
        roots = self._roots if namespaces is None else {n: self._roots[n] for n in namespaces if n in self._roots}
        stack = list(roots.values())
        while stack:
            node = stack.pop()
            if not node.is_root:
                yield node
            stack.extend(node.children.values())

    def namespaces(self) -> list[Hashable]:
        return list(self._roots)

    # ---- updates -------------------------------------------------------------------------

    def insert(
        self, tokens: Sequence[int] | np.ndarray, pages: Sequence[int] | np.ndarray, namespace: Hashable = None
    ) -> int:
        """Cache ``tokens`` (whole pages; a partial last page is ignored) held in ``pages``.

        Returns how many leading tokens were cached on the device already: those pages stay the
        tree's, and the caller's own pages for them are duplicates to free (``commit`` does both
        steps). The tree takes the rest, in place of what lower tiers held of them. Page ids
        are trusted (checking each against the allocator would double the cost of an insert); a
        page handed in twice surfaces as a double free when it is evicted.
        """
        key = self._key(tokens)
        pages = as_ids(pages, "page ids")
        if pages.size != len(key) // self._page_bytes:
            raise ValueError(
                f"insert of {len(key) // TOKEN_BYTES} page-aligned tokens needs {len(key) // self._page_bytes} "
                f"page ids at page_size {self.page_size}, got {pages.size}"
            )
        if not key:
            return 0  # under one page: nothing to cache, and no namespace root to leave behind
        root, path = self._root(namespace), []
        off = self._walk(root, key, path)
        cached = self._adopt(path, pages) if path and path[-1].tier is not Tier.DEVICE else off
        if off < len(key):
            self._add_leaf(path[-1] if path else root, key[off:], pages[off // self._page_bytes :])
            if self.events is not None:
                self.events.append(CacheEvent(True, namespace, key, off // TOKEN_BYTES))
        return cached // TOKEN_BYTES

    def commit(
        self,
        tokens: Sequence[int] | np.ndarray,
        pages: Sequence[int] | np.ndarray,
        held: int,
        namespace: Hashable = None,
    ) -> int:
        """``insert`` a finished prompt, then return to the allocator the caller's own pages that
        duplicate what another request cached meanwhile. Returns what ``insert`` returns.

        ``pages`` covers the whole pages of ``tokens`` (a partial last page's tokens are ignored;
        its page stays the caller's). The first ``held`` tokens' pages are the tree's already (the
        caller's locked match: ``held=m.length``); the rest are the caller's own. The held prefix
        is locked, so it is still cached and the returned length is at least ``held``: the
        caller's pages for tokens ``[held, returned)`` are the duplicates freed here, and the tree
        takes those after them. Unlock the match after committing, not before.
        """
        if self.allocator is None:
            raise ValueError(
                "commit frees duplicate pages to the cache's allocator, and this cache has none: use insert"
            )
        if held < 0 or held % self.page_size:
            raise ValueError(f"held must be a match length (a multiple of page_size {self.page_size}), got {held}")
        pages = as_ids(pages, "page ids")
        cached = self.insert(tokens, pages, namespace)
        if cached < held:
            raise RuntimeError(
                f"commit: only {cached} of the {held} held tokens were cached; lock the match until commit "
                "and pass the tokens that were matched"
            )
        self.allocator.free(pages[held // self.page_size : cached // self.page_size])
        return cached

    def lock(self, match: MatchResult) -> None:
        """Pin ``match.last_node`` and its ancestors: none of them can be evicted until ``unlock``.

        Lock right after matching: if ``evict`` trimmed or removed the node in between, some of
        ``match.pages`` went back to the allocator (and may be handed out again), so this raises.
        """
        if not isinstance(match, MatchResult):
            raise TypeError(f"lock takes the MatchResult of match_prefix, got {type(match).__name__}")
        node = match.last_node
        if node.version != match.version:
            raise RuntimeError(
                f"lock of {node}, which was trimmed/evicted since the match: match again, and lock right after matching"
            )
        self._lock_path(node)

    def unlock(self, node: Node) -> None:
        self._check_live(node)
        if node.is_root:
            return
        if node.lock_ref <= 0:
            raise RuntimeError(f"unlock of {node}, which is not locked")
        self._unlock_path(node)

    def record_hit(self, match: MatchResult) -> None:
        """Count a request's reuse of ``match``'s prefix (every node of its path), for ``top_prefixes``."""
        node = match.last_node if match.length else None
        while node is not None and not node.is_root:
            node.hits += 1
            node = node.parent

    def top_prefixes(
        self, k: int = 8, head_tokens: int = 32, namespaces: Iterable[Hashable] | None = None
    ) -> list[dict]:
        """The ``k`` most reused cached prefixes (of ``namespaces`` only, when given; see
        ``node.top_prefixes``): a tenant's question walks its own tree alone."""
        return top_prefixes(self.nodes(namespaces), k, head_tokens)

    def evict(self, num_pages: int) -> int:
        """Free ``num_pages`` unlocked device pages, leaves first, smallest priority first (moving
        them to a lower tier when there is one); returns how many were freed (fewer only when fewer
        are evictable)."""
        if num_pages < 0:
            raise ValueError(f"cannot evict a negative number of pages ({num_pages})")
        remaining = num_pages
        freed: list[IdArray] = []
        held: list[Node] = []  # retained, with no room below: filed again afterwards
        while remaining > 0 and (entry := self._lru.pop_oldest()) is not None:
            if self._device_candidate(entry[1], entry[0], held):
                tail = self._cut(entry[1], max(0, entry[1].pages.size - remaining))
                remaining -= tail.pages.size
                freed.append(self._demote(tail))
        for leaf in held:
            self._lru.add(leaf)
        if freed:
            self._free(np.concatenate(freed))
        return num_pages - remaining

    # ---- internals -----------------------------------------------------------------------

    def _key(self, tokens: Sequence[int] | np.ndarray) -> bytes:
        arr = as_ids(tokens, "token ids")
        if arr.size % self.page_size:
            arr = arr[: arr.size - arr.size % self.page_size]
        return arr.tobytes()

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

    def _walk(self, root: Node, key: bytes, path: list[Node] | None, touch: bool = True) -> int:
        """Follow ``key`` down from ``root`` as far as the tree holds it (in any tier), splitting
        the edge where it leaves the tree and stamping the path with a new tick. Returns the bytes
        of ``key`` matched; appends the nodes along the way to ``path``.

        With ``touch=False`` it only measures (``prefix_length``): no split, no tick; the bytes
        count the diverging edge's common pages too."""
        tick = self._next_tick() if touch else 0
        prio = self.policy.match_key(tick) if touch else 0
        node, off, end, page_bytes = root, 0, len(key), self._page_bytes
        while off < end:
            child = node.children.get(key[off : off + page_bytes])
            if child is None:
                break
            diverges = not key.startswith(child.key, off)
            n = self._common_bytes(child.key, key, off) if diverges else len(child.key)
            if diverges:
                if not touch:
                    return off + n  # measuring only: the edge stays whole
                child = self._split(child, n)
            if touch:
                lower = prio < child.prio
                child.tick, child.prio, child.promoted = tick, prio, True
                if lower:
                    self._resort(child)
            if path is not None:
                path.append(child)
            node, off = child, off + n
            if diverges:
                break
        return off

    def _common_bytes(self, edge: bytes, key: bytes, off: int) -> int:
        """Bytes of ``edge`` that ``key[off:]`` repeats, rounded down to whole pages, for an edge
        that ``key`` does not contain whole."""
        m = min(len(edge), len(key) - off)
        if m < len(edge) and edge.startswith(key[off:]):
            return m
        a = np.frombuffer(edge, dtype=ID_DTYPE, count=m // TOKEN_BYTES)
        b = np.frombuffer(key, dtype=ID_DTYPE, count=m // TOKEN_BYTES, offset=off)
        first = int(np.argmax(a != b))
        return first // self.page_size * self._page_bytes

    def _split(self, child: Node, n: int) -> Node:
        """Cut ``child``'s edge after ``n`` bytes; the new node is the head, ``child`` keeps the
        tail (so a request holding ``child`` still holds the deepest node of its path)."""
        p = n // self._page_bytes
        head = Node(child.key[:n], child.pages[:p], child.parent, child.tick, next(self._ids), child.lock_ref)
        head.hits, head.tier, head.namespace = child.hits, child.tier, child.namespace
        head.prio, head.promoted = child.prio, child.promoted
        head.retain_until, head.retain_ttl = child.retain_until, child.retain_ttl
        if child.disk is not None:
            head.disk, child.disk = child.disk[:p], child.disk[p:]
        if child.ids is not None:
            head.ids, child.ids = child.ids[:p], child.ids[p:]
        child.parent.children[child.key[: self._page_bytes]] = head
        child.key, child.pages, child.parent = child.key[n:], child.pages[p:], head
        head.children[child.key[: self._page_bytes]] = child
        return head

    def _lock_path(self, node: Node) -> None:
        while node.parent is not None:
            if node.lock_ref == 0:
                self._evictable -= node.pages.size
                self._protected += node.pages.size
            node.lock_ref += 1
            node = node.parent

    def _unlock_path(self, node: Node) -> None:
        leaf = node
        while node.parent is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable += node.pages.size
                self._protected -= node.pages.size
            node = node.parent
        if leaf.lock_ref == 0 and self._device_leaf(leaf):
            self._lru.add(leaf)

    def _add_leaf(self, parent: Node, key: bytes, pages: IdArray) -> None:
        """Cache a new edge below ``parent``: one node per run of pages the policy keys alike."""
        page_bytes, ids, at = self._page_bytes, self._page_ids(parent, key), 0
        for run in self.policy.admit(ids, pages.size, self._tick):
            end = at + run.pages
            node = Node(
                key[at * page_bytes : end * page_bytes], pages[at:end].copy(), parent, self._tick, next(self._ids)
            )
            node.prio, node.promoted, node.namespace = run.prio, run.promoted, parent.namespace
            node.ids = ids[at:end] if ids is not None else None
            parent.children[node.key[:page_bytes]] = node
            self._evictable += run.pages
            if self.tiers is not None and self.tiers.disk_pages:
                self._write_through(node)
            parent, at = node, end
        self._lru.add(parent)

    def _page_ids(self, parent: Node, key: bytes) -> list[int] | None:
        """The identities of ``key``'s pages below ``parent``, when the policy keeps them."""
        prev = parent.ids[-1] if parent.ids else namespace_seed(parent.namespace)
        return self.policy.page_ids(prev, key, self._page_bytes)

    def _resort(self, node: Node) -> None:
        """``node``'s priority fell below its entries' keys: file it again where it is filed."""
        lists = (self._lru,) if self.tiers is None else (self._lru, self.tiers.host_lru, self.tiers.disk_lru)
        for leaves in lists:
            if getattr(node, leaves.slot) is not None:
                leaves.refile(node)

    def _free(self, pages: IdArray) -> None:
        if self.allocator is not None:
            self.allocator.free(pages)

    @staticmethod
    def _device_leaf(node: Node) -> bool:
        return not any(c.tier is Tier.DEVICE for c in node.children.values())

    @staticmethod
    def _check_live(node: Node) -> None:
        if node.children is None:
            raise RuntimeError(f"{node} was evicted: match the prefix again (lock right after matching)")
