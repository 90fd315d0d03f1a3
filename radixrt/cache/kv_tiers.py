"""The K/V behind the lower tiers: a host pool of page slots (pinned memory on CUDA) and a disk
store, and the copies between them and the device's KV pool. ``tiers.LowerTiers`` calls it; the
radix tree decides what moves.

A host slot is laid out as a pool page (each of the pool's tensors, per layer); a disk file holds
a page's bytes: K, then V, then their scales in a quantized pool, each ``[layers, page, ...]``.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np
import torch

from radixrt.cache.disk_store import DiskEntry, DiskLayout, DiskStore
from radixrt.cache.ids import IdArray
from radixrt.cache.kv_pool import KVPool
from radixrt.cache.tiers import LowerTiers

HOST_MEMORY_HEADROOM = 0.9  # of the memory available at start: the most a host tier may take


def available_host_memory() -> int:
    """Bytes of memory the system can still give (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_host_memory(wanted: int, what: str = "a host KV tier") -> None:
    """Refuse (``ValueError``, with the figures) host tiers that the machine's memory cannot hold."""
    available = available_host_memory()
    if wanted > HOST_MEMORY_HEADROOM * available:
        raise ValueError(
            f"{what} would take {wanted / 2**30:.1f} GiB, but this machine has {available / 2**30:.1f} GiB "
            f"of memory available, and host tiers may take at most {HOST_MEMORY_HEADROOM:.0%} of it"
        )


def disk_layout(pool: KVPool, model: str) -> DiskLayout:
    return DiskLayout(model=model, dtype=str(pool.dtype), page_size=pool.page_size, page_bytes=pool.bytes_per_page)


class KVTiers:
    """Moves pages between ``pool`` (the device), ``host_pages`` host slots and ``disk``. A page is
    everything ``pool.tensors()`` holds for it: K and V, and their scales in a quantized pool."""

    def __init__(self, pool: KVPool, host_pages: int = 0, disk: DiskStore | None = None) -> None:
        self.pool, self.disk = pool, disk
        self.host: list[torch.Tensor] = []  # laid out as the pool's tensors: [layers, slots, ...]
        if host_pages:
            check_host_memory(host_pages * pool.bytes_per_page)
            pinned = pool.k.device.type == "cuda"
            self.host = [
                torch.empty((t.shape[0], host_pages, *t.shape[2:]), dtype=t.dtype, pin_memory=pinned)
                for t in pool.tensors()
            ]

    def _index(self, pages: IdArray) -> torch.Tensor:
        return torch.as_tensor(pages, dtype=torch.long, device=self.pool.k.device)

    def to_host(self, pages: IdArray, slots: IdArray) -> None:
        idx, at = self._index(pages), torch.as_tensor(slots, dtype=torch.long)
        for pool, host in zip(self.pool.tensors(), self.host):
            host.index_copy_(1, at, pool.index_select(1, idx).to("cpu"))

    def to_device(self, slots: IdArray, pages: IdArray) -> None:
        idx, at = self._index(pages), torch.as_tensor(slots, dtype=torch.long)
        for pool, host in zip(self.pool.tensors(), self.host):
            pool.index_copy_(1, idx, host.index_select(1, at).to(pool.device, non_blocking=True))

    def _blobs(self, pages: IdArray) -> np.ndarray:
        """Device pages as one row of bytes each: every tensor's part of the page, in order."""
        idx, n = self._index(pages), len(pages)
        parts = [t.index_select(1, idx).transpose(0, 1).contiguous().to("cpu").view(torch.uint8).reshape(n, -1)
                 for t in self.pool.tensors()]  # fmt: skip
        return torch.cat(parts, dim=1).numpy()

    def _unblob(self, raw: torch.Tensor, pages: IdArray) -> None:
        idx, at = self._index(pages), 0
        for t in self.pool.tensors():
            size = t[:, 0].numel() * t.element_size()
            part = raw[:, at : at + size].contiguous().view(t.dtype).reshape(len(pages), t.shape[0], *t.shape[2:])
            t.index_copy_(1, idx, part.transpose(0, 1).to(t.device, non_blocking=True))
            at += size

    def write(self, entries: list[DiskEntry], pages: IdArray) -> bool:
        raw = self._blobs(pages)
        for i, entry in enumerate(entries):
            if not self.disk.write(entry, raw[i]):
                self.disk.delete([e.key for e in entries[:i]])  # all or nothing: the tree counts whole nodes
                return False
        return True

    def read(self, keys: list[bytes], pages: IdArray) -> bool:
        blobs = []
        for key in keys:
            blob = self.disk.read(key)
            if blob is None:
                return False
            blobs.append(blob)
        self._unblob(torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8).view(len(keys), -1), pages)
        return True

    def delete(self, keys: list[bytes]) -> None:
        self.disk.delete(keys)


def lower_tiers(
    pool: KVPool, host_bytes: int, disk_dir: str | os.PathLike | None, disk_bytes: int, model: str
) -> tuple[LowerTiers | None, DiskStore | None]:
    """The tiers below ``pool`` (None when neither a host size nor a disk directory is given) and
    the disk's store; ``model`` names the weights, so that no other model's pages are ever read."""
    if not host_bytes and disk_dir is None:
        return None, None
    if host_bytes < 0 or disk_bytes < 0:
        raise ValueError(f"tier sizes are byte counts >= 0, got host {host_bytes}, disk {disk_bytes}")
    host_pages = int(host_bytes) // pool.bytes_per_page
    disk_pages = int(disk_bytes) // pool.bytes_per_page if disk_dir is not None else 0
    for name, size, pages in (("host", host_bytes, host_pages), ("disk", disk_bytes, disk_pages)):
        if size and not pages:
            raise ValueError(f"a {name} tier of {size} bytes holds no page: a page takes {pool.bytes_per_page} bytes")
    if disk_dir is not None and not disk_pages:
        raise ValueError("a disk cache needs a size (disk_cache_bytes)")
    kv = KVTiers(pool, host_pages)  # refuses a host tier larger than memory before the disk is opened
    kv.disk = DiskStore(disk_dir, disk_layout(pool, model)) if disk_dir is not None else None
    return LowerTiers(host_pages, disk_pages, kv), kv.disk


def tier_stats(cache, disk: DiskStore | None) -> dict:
    """Pages in each lower tier, their capacities, the pages moved, and the disk store's counters."""
    t = cache.tiers
    if t is None:
        return {}
    out = {"pages_host": t.host_used, "pages_host_total": t.host_pages}
    out |= {"pages_disk": t.disk_used, "pages_disk_total": t.disk_pages, **asdict(t.counters)}
    if disk is not None:
        out |= {f"disk_{name}": value for name, value in disk.stats().items()}
    return out
