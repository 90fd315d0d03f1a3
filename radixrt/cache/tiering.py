"""How pages move between the radix tree's tiers: the device, a host pool and a disk
(``tiers.LowerTiers``). A mixin of ``RadixCache``: it works on the tree's nodes directly.

A node is in one of the device and the host, or in neither (DISK: the disk alone holds it); the
disk may also hold a copy of a device or host node. Every node is in some tier, and a node that
leaves its last tier leaves the tree with everything below it (a suffix is useless without its
prefix). The device's pages form a prefix-closed set (pages load root-first and the device evicts
only its own leaves), and so do the disk's (a page is written only below a page on disk, and the
disk evicts only its own leaves).

Each tier evicts its own leaves, smallest priority first (one eviction policy orders every tier:
``policy.py``): the device's unlocked leaves move to the host (evicting host leaves to make room),
else to disk-only when the disk has a copy, else they are dropped; host leaves move to disk-only or
are dropped; disk leaves are deleted. A node stamped with the current tick (the request being
matched or inserted right now) is never taken from a lower tier meanwhile, so a match never loses
the pages it is loading. The policy hears of pages only when they leave the tree altogether (an
eviction from the last tier that held them): moving down a tier is no eviction to its ghost list.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from radixrt.cache.disk_store import DiskEntry, page_key
from radixrt.cache.ids import ID_DTYPE, IdArray
from radixrt.cache.node import TOKEN_BYTES, CacheEvent, Node, Tier

NO_PAGES = np.zeros(0, dtype=ID_DTYPE)
NO_PAGES.flags.writeable = False


class Tiering:
    """The tier movements of ``RadixCache`` (see the module docstring)."""

    def tier_sizes(self) -> dict[str, int]:
        """Pages in each tier; the disk counts its copies of device and host pages too."""
        t = self.tiers
        return {
            "device": self.total_size(),
            "host": t.host_used if t is not None else 0,
            "disk": t.disk_used if t is not None else 0,
        }

    def held_pages(self) -> int | None:
        """How many distinct pages the tree can hold (None without an allocator): the device's and
        the host's, or the disk's where that is more (it holds copies of theirs)."""
        if self.allocator is None:
            return None
        t, device = self.tiers, self.allocator.num_pages
        return device if t is None else max(device + t.host_pages, t.disk_pages)

    def restore(self, entries: list[DiskEntry]) -> int:
        """Rebuild the disk-only part of the tree from the disk's index (parents first), as a
        restart on the same disk directory does; returns the pages restored. Entries whose parent
        is not restored, or whose page is cached already, are skipped."""
        t = self.tiers
        if t is None or not t.disk_pages:
            raise ValueError("restore needs a cache with a disk tier")
        page_bytes, held = self._page_bytes, {}
        restored: list[Node] = []
        for e in entries:
            parent = self._root(e.namespace) if e.parent is None else held.get(e.parent)
            if parent is None or len(e.tokens) != page_bytes or e.tokens in parent.children:
                continue
            node = Node(e.tokens, NO_PAGES, parent, 0, next(self._ids))
            node.tier, node.disk, node.namespace = Tier.DISK, [e.key], parent.namespace
            node.ids = self._page_ids(parent, e.tokens)
            parent.children[e.tokens] = node
            held[e.key] = node
            restored.append(node)
        t.disk_used += len(restored)
        for node in restored:
            while node.children is not None and len(node.children) == 1:  # one node per run of pages
                (child,) = node.children.values()
                node.key, node.disk, node.children = node.key + child.key, node.disk + child.disk, child.children
                if node.ids is not None:
                    node.ids = node.ids + child.ids
                for grandchild in node.children.values():
                    grandchild.parent = node
                child.children = None
        for node in restored:
            if node.children is not None and not node.children:
                t.disk_lru.add(node)
                if self.events is not None:
                    self.events.append(CacheEvent(True, node.namespace, self._path_key(node), 0, Tier.DISK))
        if t.disk_used > t.disk_pages:
            self._evict_disk(t.disk_used - t.disk_pages)
        return len(restored)

    def forget(self, tokens: Sequence[int] | np.ndarray, start: int, namespace: Hashable = None) -> int:
        """Drop the cached pages of ``tokens`` from token ``start`` on (rounded up to a page),
        where nothing extends them and no request holds them; returns how many pages went. A
        copy of another tree applies that tree's eviction events with it."""
        root = self._roots.get(namespace)
        if root is None:
            return 0
        key, page_bytes = self._key(tokens), self._page_bytes
        cut = -(-start // self.page_size) * page_bytes
        path: list[tuple[Node, int]] = []
        node, off = root, 0
        while off < len(key):
            child = node.children.get(key[off : off + page_bytes])
            if child is None or not key.startswith(child.key, off):
                break
            path.append((child, off))
            node, off = child, off + len(child.key)
        freed: list[IdArray] = []
        for node, off in reversed(path):
            if node.children or node.lock_ref or off + len(node.key) <= cut:
                break
            keep = max(0, cut - off) // page_bytes
            freed.append(self._drop(self._cut(node, keep)))
            if keep:
                break
        if freed:
            self._free(np.concatenate(freed))
        return sum(p.size for p in freed)

    def reset(self) -> None:
        """Drop every cached prefix from every tier, returning its pages to the allocator (the
        eviction policy keeps what it learnt)."""
        if self._protected:
            raise RuntimeError(f"reset while {self._protected} cached pages are locked by running requests")
        tops = [child for root in list(self._roots.values()) for child in list(root.children.values())]
        freed = [self._drop(child) for child in tops]
        if freed:
            self._free(np.concatenate(freed))
        self._init_tree()

    # ---- loading ---------------------------------------------------------------------------

    def _load(self, root: Node, path: list[Node]) -> tuple[int, int]:
        """Load ``path``'s lower-tier nodes into the device, root-first, while the device has
        room; cut ``path`` to what is on the device. Returns the tokens loaded from the host and
        from disk."""
        first = next(i for i, node in enumerate(path) if node.tier is not Tier.DEVICE)
        anchor, done, loaded = (path[first - 1] if first else None), first, [0, 0]
        if anchor is not None:
            self._lock_path(anchor)
        try:
            for i in range(first, len(path)):
                node = path[i]
                if node.children is None or node.parent is not (path[i - 1] if i else root):
                    break  # dropped while making room for the nodes above it
                pages = self._device_pages(node.num_pages)
                if pages is None:
                    break
                tier = node.tier
                if not self._fill(node, pages):
                    self._free(pages)
                    self._free(self._drop(node))
                    break
                loaded[tier - 1] += pages.size * self.page_size
                node.pages, node.tier = pages, Tier.DEVICE
                self._moved(node)
                self._evictable += pages.size
                if anchor is not None:
                    self._unlock_path(anchor)
                anchor, done = node, i + 1
                self._lock_path(anchor)
        finally:
            if anchor is not None:
                self._unlock_path(anchor)
        del path[done:]
        return loaded[0], loaded[1]

    def _fill(self, node: Node, pages: IdArray) -> bool:
        t = self.tiers
        if node.tier is Tier.HOST:
            t.to_device(node.pages, pages)
            t.host.free(node.pages)
            return True
        return t.read(node.disk, pages)

    def _device_pages(self, n: int) -> IdArray | None:
        pages = self.allocator.alloc(n)
        short = n - self.allocator.available()
        if pages is None and short <= self._evictable:
            self.evict(short)
            pages = self.allocator.alloc(n)
        return pages

    def _adopt(self, path: list[Node], pages: IdArray) -> int:
        """An insert that walked into lower-tier nodes: they take the caller's device pages for
        their tokens (computed anyway). Returns the bytes of the path that were on the device."""
        first = next(i for i, node in enumerate(path) if node.tier is not Tier.DEVICE)
        device = sum(len(node.key) for node in path[:first])
        at = device // self._page_bytes
        for node in path[first:]:
            n = node.num_pages
            if node.tier is Tier.HOST:
                self.tiers.host.free(node.pages)
            node.pages, node.tier = pages[at : at + n].copy(), Tier.DEVICE
            self._moved(node)
            self._evictable += n
            self._lru.add(node)
            at += n
        return device

    # ---- leaving a tier --------------------------------------------------------------------

    def _demote(self, node: Node) -> IdArray:
        """Move an unlocked device leaf down a tier (or out of the tree); returns its device pages."""
        t, pages = self.tiers, node.pages
        slots = self._host_slots(pages.size) if t is not None and t.host is not None else None
        if slots is None and node.disk is None:
            return self._drop(node, evicted=True)
        self._evictable -= pages.size
        node.version += 1
        if slots is not None:
            t.to_host(pages, slots)
            node.pages, node.tier = slots, Tier.HOST
            t.host_lru.add(node)
        else:
            node.pages, node.tier = NO_PAGES, Tier.DISK
        self._moved(node)
        self._refile(node.parent)
        return pages

    def _host_slots(self, n: int) -> IdArray | None:
        host = self.tiers.host
        if n > host.num_pages:
            return None
        if n > host.available():
            self._evict_host(n - host.available())
        return host.alloc(n)

    def _evict_host(self, n: int) -> int:
        t, freed, in_use = self.tiers, 0, []
        while freed < n and (entry := t.host_lru.pop_oldest()) is not None:
            prio, node = entry
            if node.children is None or node.tier is not Tier.HOST:
                continue
            if any(c.tier is Tier.HOST for c in node.children.values()):
                continue
            if node.tick == self._tick or (node.disk is None and self._kept(node)):
                in_use.append(node)  # in use right now, or retained: filed again once this is done
                continue
            if prio != node.prio:
                t.host_lru.add(node)  # touched since it was filed
                continue
            freed += node.pages.size
            if node.disk is None:
                self._drop(node, evicted=True)
                continue
            t.counters.host_evictions += node.pages.size
            t.host.free(node.pages)
            node.pages, node.tier = NO_PAGES, Tier.DISK
            self._moved(node)
            self._refile(node.parent)
        for node in in_use:
            t.host_lru.add(node)
        return freed

    def _evict_disk(self, n: int) -> int:
        t, freed, in_use = self.tiers, 0, []
        while freed < n and (entry := t.disk_lru.pop_oldest()) is not None:
            prio, node = entry
            if node.children is None or node.disk is None:
                continue
            if any(c.disk is not None for c in node.children.values()):
                continue
            if node.tick == self._tick or self._kept(node):
                in_use.append(node)
                continue
            if prio != node.prio:
                t.disk_lru.add(node)
                continue
            freed += len(node.disk)
            if node.tier is Tier.DISK:
                self._drop(node, evicted=True)
                continue
            t.delete(node.disk)
            node.disk = None
            self._refile(node.parent)
        for node in in_use:
            t.disk_lru.add(node)
        return freed

    def _drop(self, node: Node, evicted: bool = False) -> IdArray:
        """Take ``node`` and everything below it out of every tier and the tree; returns the
        device pages they held, for the caller to free. ``evicted``: the policy made room (its
        ghost list hears of the pages), rather than a reset, a ``forget`` or a failed read."""
        order, stack = [], [node]
        while stack:
            at = stack.pop()
            order.append(at)
            stack.extend(at.children.values())
        t, freed = self.tiers, []
        for at in reversed(order):  # children first: each is a leaf when it goes
            if at.tier is Tier.DEVICE:
                self._evictable -= at.pages.size
                freed.append(at.pages)
            elif at.tier is Tier.HOST:
                t.host.free(at.pages)
                t.counters.host_evictions += at.pages.size
            if t is not None:
                t.counters.dropped += at.num_pages
            if at.disk is not None:
                t.delete(at.disk)
                at.disk = None
            if evicted and at.ids is not None:
                self.policy.evicted(at.ids, at.promoted)
            self._remove_leaf(at)
        return np.concatenate(freed) if len(freed) > 1 else (freed[0] if freed else NO_PAGES)

    def _cut(self, node: Node, keep: int) -> Node:
        """``node``'s pages after its first ``keep`` as a node of their own (``node`` itself when
        ``keep`` is 0): what an eviction of part of an edge takes."""
        if keep == 0:
            return node
        self._split(node, keep * self._page_bytes)
        return node

    def _remove_leaf(self, leaf: Node) -> None:
        """Unhook a node with no children left from the tree."""
        if self.events is not None:
            key = self._path_key(leaf)
            self.events.append(CacheEvent(False, leaf.namespace, key, (len(key) - len(leaf.key)) // TOKEN_BYTES))
        parent = leaf.parent
        del parent.children[leaf.key[: self._page_bytes]]
        leaf.parent = None
        leaf.children = None  # marks it evicted
        leaf.version += 1
        if parent.is_root:
            if not parent.children and parent.namespace is not None:
                del self._roots[parent.namespace]
        else:
            self._refile(parent)

    def _refile(self, node: Node) -> None:
        """``node`` lost a child from some tier: file it where it may now be a leaf."""
        if node.is_root:
            return
        children = node.children.values()
        if node.tier is Tier.DEVICE:
            if node.lock_ref == 0 and not any(c.tier is Tier.DEVICE for c in children):
                self._lru.add(node)
        elif node.tier is Tier.HOST and not any(c.tier is Tier.HOST for c in children):
            self.tiers.host_lru.add(node)
        if node.disk is not None and not any(c.disk is not None for c in children):
            self.tiers.disk_lru.add(node)

    # ---- the disk --------------------------------------------------------------------------

    def _write_through(self, leaf: Node) -> None:
        """Queue a new leaf's pages for disk, below its parent's pages there."""
        t, parent, namespace = self.tiers, leaf.parent, leaf.namespace
        below_disk = lambda: parent.is_root or (parent.children is not None and parent.disk is not None)  # noqa: E731
        if not below_disk() or not (namespace is None or isinstance(namespace, str)):
            return  # a page goes to disk below its prefix only; a namespace must be a name to be stored
        n = leaf.pages.size
        if t.disk_used + n > t.disk_pages:
            self._evict_disk(t.disk_used + n - t.disk_pages)
            if not below_disk():
                return
        if t.disk_used + n > t.disk_pages:
            t.counters.disk_writes_refused += n
            return
        prev, entries, page_bytes = (None if parent.is_root else parent.disk[-1]), [], self._page_bytes
        for i in range(n):
            tokens = leaf.key[i * page_bytes : (i + 1) * page_bytes]
            key = page_key(prev, namespace, tokens)
            entries.append(DiskEntry(key, prev, namespace, tokens))
            prev = key
        if t.write(entries, leaf.pages):
            leaf.disk = [e.key for e in entries]
            t.disk_lru.add(leaf)

    def _moved(self, node: Node) -> None:
        """Tell the events' reader that ``node``'s pages are in another tier now."""
        if self.events is not None:
            key = self._path_key(node)
            self.events.append(
                CacheEvent(True, node.namespace, key, (len(key) - len(node.key)) // TOKEN_BYTES, node.tier)
            )

    def _path_key(self, node: Node) -> bytes:
        parts = []
        while node.parent is not None:
            parts.append(node.key)
            node = node.parent
        return b"".join(reversed(parts))
