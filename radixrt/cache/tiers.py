"""The tiers below the device as the radix tree sees them: a host pool of page slots and a disk of
pages, their capacities and counters, and the mover that copies K/V between tiers.

The tree decides what moves where (``tiering.py``); a mover does the copying. ``KVTiers``
(``kv_tiers.py``) moves real K/V; without a mover (a simulation) nothing is copied and every read
succeeds, so the simulator and the engine run the same tree and hit alike.

Write policy. The host tier is written back: a page is copied to the host when the device evicts
it, never before, so a page that is computed and never evicted costs no copy. The disk is written
through: every page is queued for disk when it is cached, so that the disk holds what the process
computed even after a crash, and a restart finds it (a page evicted from the host that the disk
already holds costs nothing more). Pages move between the device and the host (a page is in one of
the two); the disk keeps its copy until the disk itself evicts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from radixrt.cache.allocator import PageAllocator
from radixrt.cache.disk_store import DiskEntry
from radixrt.cache.ids import IdArray
from radixrt.cache.lru import LruLeaves


class KVMover(Protocol):
    def to_host(self, pages: IdArray, slots: IdArray) -> None:
        """Copy device pages into host slots."""

    def to_device(self, slots: IdArray, pages: IdArray) -> None:
        """Copy host slots into device pages."""

    def write(self, entries: list[DiskEntry], pages: IdArray) -> bool:
        """Queue device pages for disk under ``entries``' keys; False when the disk takes none."""

    def read(self, keys: list[bytes], pages: IdArray) -> bool:
        """Load the disk's pages into device pages; False when one is missing or corrupt."""

    def delete(self, keys: list[bytes]) -> None:
        """Drop pages from the disk."""


@dataclass
class TierCounters:
    """Pages moved between tiers, since the cache was made."""

    host_stores: int = 0  # device -> host (evictions that kept the page)
    host_loads: int = 0  # host -> device
    disk_writes: int = 0  # pages queued for disk (write-through)
    disk_writes_refused: int = 0  # pages the disk did not take (full, busy, or no room)
    disk_loads: int = 0  # disk -> device
    disk_load_failures: int = 0  # reads that found a page missing or corrupt: dropped and recomputed
    host_evictions: int = 0  # pages that left the host (to disk-only, or gone)
    disk_evictions: int = 0  # pages deleted from the disk
    dropped: int = 0  # pages that left every tier


@dataclass
class LowerTiers:
    """Capacities (in pages) of the host and the disk tier; 0 means no such tier."""

    host_pages: int = 0
    disk_pages: int = 0
    mover: KVMover | None = None
    counters: TierCounters = field(default_factory=TierCounters)

    def __post_init__(self) -> None:
        if self.host_pages < 0 or self.disk_pages < 0:
            raise ValueError(f"tier sizes are page counts >= 0, got host {self.host_pages}, disk {self.disk_pages}")
        self.host = PageAllocator(self.host_pages) if self.host_pages else None
        self.disk_used = 0
        self.host_lru = LruLeaves("host_entry")
        self.disk_lru = LruLeaves("disk_entry")

    @property
    def host_used(self) -> int:
        return self.host.used() if self.host is not None else 0

    def to_host(self, pages: IdArray, slots: IdArray) -> None:
        if self.mover is not None:
            self.mover.to_host(pages, slots)
        self.counters.host_stores += pages.size

    def to_device(self, slots: IdArray, pages: IdArray) -> None:
        if self.mover is not None:
            self.mover.to_device(slots, pages)
        self.counters.host_loads += pages.size

    def write(self, entries: list[DiskEntry], pages: IdArray) -> bool:
        ok = self.mover is None or self.mover.write(entries, pages)
        if ok:
            self.counters.disk_writes += len(entries)
            self.disk_used += len(entries)
        else:
            self.counters.disk_writes_refused += len(entries)
        return ok

    def read(self, keys: list[bytes], pages: IdArray) -> bool:
        ok = self.mover is None or self.mover.read(keys, pages)
        if ok:
            self.counters.disk_loads += len(keys)
        else:
            self.counters.disk_load_failures += len(keys)
        return ok

    def delete(self, keys: list[bytes]) -> None:
        if self.mover is not None:
            self.mover.delete(keys)
        self.disk_used -= len(keys)
        self.counters.disk_evictions += len(keys)
