"""Retention: prefixes kept cached for a time after their last use (a mixin of ``RadixCache``).

``retain(tokens, ttl)`` marks the cached prefix of ``tokens``: each node on its path keeps a ttl
and a deadline, ``clock() + ttl``, which every match through it renews. Until the deadline a
retained node is never dropped: the device moves it down only into room a lower tier has (a free
host slot, or its disk copy), the host only to its disk copy, and the disk not at all. After the
deadline it is an ordinary node again; nothing needs to run for that. Ancestors of a retained node
are retained at least as long (a path is marked whole), so no retained node loses its prefix.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence

import numpy as np

from radixrt.cache.node import Node, Tier

_EVERY = object()


class Retention:
    """The retention of ``RadixCache`` (see the module docstring)."""

    clock = staticmethod(time.time)  # wall time: deadlines mean the same after a restart

    def retain(self, tokens: Sequence[int] | np.ndarray, ttl: float, namespace: Hashable = None) -> int:
        """Keep the cached prefix of ``tokens`` (whole pages) for ``ttl`` seconds after its last use;
        returns how many pages that is (0 when none of it is cached)."""
        if not ttl > 0:
            raise ValueError(f"a retention's ttl is a number of seconds > 0, got {ttl!r}")
        root = self._roots.get(namespace)
        if root is None:
            return 0
        path: list[Node] = []
        self._walk(root, self._key(tokens), path)
        until = self.clock() + ttl
        for node in path:
            node.retain_ttl = max(node.retain_ttl, ttl)
            node.retain_until = max(node.retain_until, until)
        self._retaining = self._retaining or bool(path)
        return sum(node.num_pages for node in path)

    def retained_pages(self, namespace: Hashable = _EVERY) -> int:
        """Pages retained now (in ``namespace``, when given), in every tier."""
        if not self._retaining:
            return 0
        now = self.clock()
        nodes = self.nodes() if namespace is _EVERY else self.nodes([namespace])
        return sum(node.num_pages for node in nodes if node.retain_until > now)

    def retain_cost(self, tokens: Sequence[int] | np.ndarray, namespace: Hashable = None) -> int:
        """Pages that retaining ``tokens`` would add to its namespace's retained pages: its whole
        pages less those retained already (read-only)."""
        key, path, now = self._key(tokens), [], self.clock()
        root = self._roots.get(namespace)
        if root is not None and self._retaining:
            self._walk(root, key, path, touch=False)
        kept = sum(node.num_pages for node in path if node.retain_until > now)
        return len(key) // self._page_bytes - kept

    def _renew(self, path: list[Node]) -> None:
        """A match went through ``path``: its retained nodes' deadlines start again."""
        now = self.clock()
        for node in path:
            if node.retain_until > now:
                node.retain_until = now + node.retain_ttl

    def _kept(self, node: Node) -> bool:
        """Whether ``node`` may not leave the tree now."""
        return self._retaining and node.retain_until > self.clock()

    def _device_candidate(self, leaf: Node, prio: float, held: list[Node]) -> bool:
        """Whether a device leaf popped at ``prio`` is to be evicted now; one that is not is filed
        again (touched since), dropped from the list (no longer a candidate) or ``held`` (retained
        with no room below it: filed again after the eviction)."""
        if leaf.children is None or leaf.tier is not Tier.DEVICE or leaf.lock_ref or not self._device_leaf(leaf):
            return False  # unlock or eviction of its children files it again
        if prio != leaf.prio:
            self._lru.add(leaf)
            return False
        if self._kept(leaf) and leaf.disk is None:
            host = self.tiers.host if self.tiers is not None else None
            if host is None or host.available() < leaf.pages.size:
                held.append(leaf)
                return False
        return True
