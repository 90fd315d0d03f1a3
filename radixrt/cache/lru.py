"""The radix cache's eviction candidates, smallest priority first.

A node's priority (``Node.prio``) is the eviction policy's key: the tick of its last use under LRU
(``policy.py``). Leaves are kept in a ``SortedList`` of (prio, id, node) entries, updated lazily
so that the hot path (match, insert, lock, unlock) never sorts: a touch that raises a node's
priority leaves its entry where it is, locking or growing a child leaves the entry where it is,
and a new entry waits in a list until the next eviction sorts it in. The cache pops the smallest
entry and re-files it if its node's priority rose since, drops it if the node is locked or no
longer a leaf, and evicts it otherwise. A touch that lowers a node's priority (a policy whose key
can fall) files it again at once (``refile``), leaving the old entry behind to be skipped when it
is popped. So an entry's key is never above its node's priority, and the first entry that
survives these checks is the true smallest leaf. Each node has at most one live entry, and
evicting k leaves costs O(k log n) plus the deferred work of earlier calls.
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
        self._unfiled: list[tuple[float, int, Node]] = []  # new entries, sorted in at the next pop

    def add(self, node: Node) -> None:
        """File ``node`` at its current priority, unless it has an entry here already (one at most)."""
        if getattr(node, self.slot) is None:
            entry = (node.prio, node.id, node)
            setattr(node, self.slot, entry)
            self._unfiled.append(entry)

    def refile(self, node: Node) -> None:
        """File ``node`` again at its priority, which fell below its entry's key."""
        setattr(node, self.slot, None)
        self.add(node)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._unfiled)

    def pop_oldest(self) -> tuple[float, Node] | None:
        """The smallest live entry's key and node (the node's entry cleared), or None when there is none."""
        if self._unfiled:
            self._sorted.update(self._unfiled)
            self._unfiled.clear()
        slot, entries = self.slot, self._sorted
        while entries:
            entry = entries.pop(0)
            node = entry[2]
            if getattr(node, slot) is entry:
                setattr(node, slot, None)
                return entry[0], node
        return None
