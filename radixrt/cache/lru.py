"""The radix cache's eviction candidates, least recently used first.

Leaves are kept in a ``SortedList`` of (tick, id, node) entries, updated lazily so that the hot
path (match, insert, lock, unlock) never sorts: a touch only moves the node's clock, locking or
growing a child leaves the entry where it is, and a new entry waits in a list until the next
eviction sorts it in. The cache pops the oldest entry and re-files it if its node was touched
since, drops it if the node is locked or no longer a leaf, and frees it otherwise. An entry's tick
is never newer than its node's, so the first entry that survives these checks is the true least
recently used leaf. Each node has at most one entry, and evicting k leaves costs O(k log n) plus
the deferred work of earlier calls.
"""

from __future__ import annotations

from sortedcontainers import SortedList

from radixrt.cache.node import Node


class LruLeaves:
    """One tier's candidates; ``slot`` names the node attribute that holds a node's entry in it
    (``lru_entry`` for the device, ``host_entry``, ``disk_entry``)."""

    def __init__(self, slot: str = "lru_entry") -> None:
        self.slot = slot
        self._sorted: SortedList = SortedList()
        self._unfiled: list[tuple[int, int, Node]] = []  # new entries, sorted in at the next pop

    def add(self, node: Node) -> None:
        """File ``node`` at its current tick, unless it has an entry here already (one at most)."""
        if getattr(node, self.slot) is None:
            entry = (node.tick, node.id, node)
            setattr(node, self.slot, entry)
            self._unfiled.append(entry)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._unfiled)

    def pop_oldest(self) -> tuple[int, Node] | None:
        """The oldest entry's tick and node (the node's entry cleared), or None when there is none."""
        if self._unfiled:
            self._sorted.update(self._unfiled)
            self._unfiled.clear()
        if not self._sorted:
            return None
        tick, _, node = self._sorted.pop(0)
        setattr(node, self.slot, None)
        return tick, node
