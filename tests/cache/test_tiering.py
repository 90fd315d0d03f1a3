"""The tiered radix cache: pages the device evicts move to the host and the disk, matches load them
back, and the tree's bookkeeping holds. Two references: a simulated twin (the same tree with no
data: what ``replay --simulate`` runs) must hit exactly as the cache that moves real K/V, and every
page a match returns must hold the K/V that was computed for that prefix."""

from __future__ import annotations

import hashlib
import shutil
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from radixrt.cache import KVPool, PageAllocator, RadixCache
from radixrt.cache.disk_store import DiskEntry, DiskStore, page_key
from radixrt.cache.kv_tiers import KVTiers, disk_layout
from radixrt.cache.node import Tier
from radixrt.cache.tiers import LowerTiers
from testkit.caches import token_streams

PAGE = 2


def sim_cache(device: int, host: int = 0, disk: int = 0, page_size: int = PAGE, policy: str = "lru") -> RadixCache:
    return RadixCache(page_size, PageAllocator(device), LowerTiers(host, disk), policy=policy)


def run(cache: RadixCache, tokens, namespace=None):
    """A request as the engine runs it: match (loading), lock, compute the rest, commit, unlock."""
    tokens = np.asarray(tokens, dtype=np.int32)
    m = cache.match_prefix(tokens, namespace)
    cache.lock(m)
    n = len(tokens) // cache.page_size
    own = cache.allocator.alloc(n - m.pages.size)
    if own is None:
        short = n - m.pages.size - cache.allocator.available()
        cache.evict(short)
        own = cache.allocator.alloc(n - m.pages.size)
    if own is not None:
        cache.commit(tokens, np.concatenate([m.pages, own]), m.length, namespace)
    cache.unlock(m.last_node)
    return m, own


def prompt(seed: int, pages: int, head: list[int] = ()) -> list[int]:
    rng = np.random.default_rng(seed)
    return list(head) + rng.integers(0, 1000, pages * PAGE - len(head)).tolist()


def test_device_evictions_move_to_the_host_and_load_back():
    cache = sim_cache(device=4, host=8)
    a, b = prompt(1, 4), prompt(2, 4)
    run(cache, a)
    run(cache, b)  # a's 4 pages go to the host to make room
    assert cache.tier_sizes() == {"device": 4, "host": 4, "disk": 0}
    m, _ = run(cache, a)
    assert m.length == len(a) and m.loaded == (len(a), 0)
    assert cache.tiers.counters.host_stores == 8 and cache.tiers.counters.host_loads == 4


def test_without_lower_tiers_eviction_drops_as_before():
    cache = RadixCache(PAGE, PageAllocator(4))
    run(cache, prompt(1, 4))
    run(cache, prompt(2, 4))
    m, _ = run(cache, prompt(1, 4))
    assert m.length == 0 and m.loaded == (0, 0)


def test_the_disk_is_written_through_and_serves_what_the_host_dropped():
    cache = sim_cache(device=4, host=4, disk=16)
    a, b, c = prompt(1, 4), prompt(2, 4), prompt(3, 4)
    for p in (a, b, c):
        run(cache, p)
    assert cache.tiers.counters.disk_writes == 12  # every page, as it was cached
    assert cache.tier_sizes() == {"device": 4, "host": 4, "disk": 12}
    m, _ = run(cache, a)  # a left the host for disk-only when c came
    assert m.loaded == (0, len(a))


def test_a_match_loads_a_shared_prefix_and_its_own_tail_from_both_tiers():
    cache = sim_cache(device=6, host=3, disk=32)
    trunk = prompt(0, 3)
    first = prompt(1, 6, trunk)
    run(cache, first)
    for seed in range(2, 5):
        run(cache, prompt(seed, 6))
    m, _ = run(cache, first)
    assert m.length == len(first) and sum(m.loaded) == len(first)


def test_a_namespace_never_hits_another_namespaces_pages_in_any_tier():
    cache = sim_cache(device=4, host=4, disk=32)
    a = prompt(1, 4)
    run(cache, a, "tenant-a")
    for seed in range(2, 5):
        run(cache, prompt(seed, 4), "tenant-a")
    m, _ = run(cache, a, "tenant-b")
    assert m.length == 0
    disk_keys = lambda ns: {k for n in cache.nodes([ns]) if n.disk for k in n.disk}  # noqa: E731
    assert disk_keys("tenant-a") and not disk_keys("tenant-a") & disk_keys("tenant-b")


def test_a_tier_never_holds_more_than_its_size_and_full_tiers_drop_the_oldest():
    cache = sim_cache(device=4, host=4, disk=8)
    prompts = [prompt(seed, 4) for seed in range(6)]
    for p in prompts:
        run(cache, p)
        sizes = cache.tier_sizes()
        assert sizes["host"] <= 4 and sizes["disk"] <= 8
    assert run(cache, prompts[0])[0].length == 0  # gone from every tier
    assert run(cache, prompts[5])[0].loaded == (len(prompts[5]), 0)  # the newest of the rest, on the host


def test_insert_over_lower_tier_nodes_takes_the_callers_pages():
    cache = sim_cache(device=8, host=8)
    a = prompt(1, 4)
    run(cache, a)
    cache.evict(4)
    assert cache.tier_sizes()["host"] == 4
    pages = cache.allocator.alloc(4)
    assert cache.insert(np.asarray(a, dtype=np.int32), pages) == 0  # nothing on the device: no duplicate
    assert cache.tier_sizes() == {"device": 4, "host": 0, "disk": 0}
    assert cache.match_prefix(np.asarray(a, dtype=np.int32)).pages.tolist() == pages.tolist()


def test_reset_empties_every_tier():
    cache = sim_cache(device=4, host=4, disk=16)
    for seed in range(3):
        run(cache, prompt(seed, 4))
    cache.reset()
    assert cache.tier_sizes() == {"device": 0, "host": 0, "disk": 0}
    assert cache.allocator.used() == 0 and cache.tiers.host.used() == 0


def test_restore_rebuilds_the_disk_part_of_the_tree():
    first = sim_cache(device=4, host=0, disk=32)
    prompts = [prompt(seed, 4, prompt(0, 2)) for seed in range(1, 4)]
    entries = []
    first.tiers.mover = Recorder(entries)
    for p in prompts:
        run(first, p)
    second = sim_cache(device=4, host=0, disk=32)
    assert second.restore(entries) == 2 + 3 * 2  # the shared trunk once
    for i, p in enumerate(prompts):
        m, _ = run(second, p)
        trunk = 2 * PAGE if i else 0  # on the device since the first load
        assert m.length == len(p) and m.loaded == (0, len(p) - trunk)


class Recorder:
    """A mover that keeps what was written to disk, to restore from (and moves no data)."""

    def __init__(self, entries: list) -> None:
        self.entries = entries

    def to_host(self, pages, slots) -> None: ...
    def to_device(self, slots, pages) -> None: ...
    def delete(self, keys) -> None: ...
    def read(self, keys, pages) -> bool:
        return True

    def write(self, entries, pages) -> bool:
        self.entries.extend(entries)
        return True


# ---- real K/V: a simulated twin, and the data itself --------------------------------------


def stamp(tokens: np.ndarray, page_size: int) -> list[float]:
    """A value per page that only that page's prefix produces."""
    return [
        int.from_bytes(hashlib.blake2b(tokens[: (j + 1) * page_size].tobytes(), digest_size=3).digest())
        for j in range(len(tokens) // page_size)
    ]


class TieredKV(RuleBasedStateMachine):
    """Requests through a cache that moves real K/V (a CPU pool, a host pool and a disk directory)
    and through its simulated twin; hits must agree, and every matched page must hold its stamp."""

    policy = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.pool = KVPool(num_layers=2, kv_heads=1, head_dim=4, page_size=PAGE, num_pages=8, dtype=torch.float32)
        self.disk = DiskStore(self.dir, disk_layout(self.pool, "test"))
        kv = KVTiers(self.pool, 5, self.disk)
        self.cache = RadixCache(PAGE, PageAllocator(8), LowerTiers(5, 12, kv), policy=self.policy)
        self.twin = sim_cache(device=8, host=5, disk=12, policy=self.policy)

    def teardown(self) -> None:
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(tokens=token_streams(PAGE), namespace=st.sampled_from([None, "b"]), again=st.booleans())
    def request(self, tokens, namespace, again) -> None:
        tokens = np.asarray(tokens[: 6 * PAGE], dtype=np.int32)
        for _ in range(1 + again):
            m, own = run_filled(self.cache, self.pool, tokens, namespace)
            twin, _ = run(self.twin, tokens, namespace)
            assert (m.length, m.loaded) == (twin.length, twin.loaded)
            want = stamp(tokens, PAGE)[: m.pages.size]
            assert self.pool.k[0, torch.as_tensor(m.pages.copy(), dtype=torch.long), 0, 0, 0].tolist() == want

    @rule(n=st.integers(1, 6))
    def evict(self, n) -> None:
        assert self.cache.evict(n) == self.twin.evict(n)

    @invariant()
    def tiers_hold(self) -> None:
        check_tiers(self.cache)
        assert self.cache.tier_sizes() == self.twin.tier_sizes()


def run_filled(cache: RadixCache, pool: KVPool, tokens: np.ndarray, namespace):
    """``run``, with the computed pages stamped as the model would write them, before the commit."""
    original = cache.commit

    def commit(toks, pages, held, ns):
        values = stamp(np.asarray(toks, dtype=np.int32), PAGE)
        for j in range(held // PAGE, len(values)):
            pool.k[:, int(pages[j])] = values[j]
        return original(toks, pages, held, ns)

    cache.commit = commit
    try:
        return run(cache, tokens, namespace)
    finally:
        del cache.commit


def check_tiers(cache: RadixCache) -> None:
    device, host, disk = [], [], 0
    for node in cache.nodes():
        parent_ok = node.parent.is_root
        if node.tier is Tier.DEVICE:
            assert parent_ok or node.parent.tier is Tier.DEVICE, "the device's pages are prefix-closed"
            device += node.pages.tolist()
        elif node.tier is Tier.HOST:
            host += node.pages.tolist()
        else:
            assert node.disk is not None and node.pages.size == 0
        if node.disk is not None:
            assert parent_ok or node.parent.disk is not None, "the disk's pages are prefix-closed"
            assert len(node.disk) == len(node.key) // (4 * cache.page_size)
            disk += len(node.disk)
    assert len(set(device)) == len(device) and len(set(host)) == len(host)
    assert not any(cache.allocator.is_free(p) for p in device)
    assert all(not cache.tiers.host.is_free(s) for s in host) and len(host) == cache.tiers.host_used
    assert disk == cache.tiers.disk_used <= cache.tiers.disk_pages


class AdaptiveTieredKV(TieredKV):
    policy = "adaptive"


TestTieredKV = TieredKV.TestCase
TestAdaptiveTieredKV = AdaptiveTieredKV.TestCase
for case in (TestTieredKV, TestAdaptiveTieredKV):
    case.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def test_a_corrupt_disk_page_is_dropped_and_the_match_stops_before_it(tmp_path):
    pool = KVPool(num_layers=1, kv_heads=1, head_dim=4, page_size=PAGE, num_pages=4, dtype=torch.float32)
    disk = DiskStore(tmp_path, disk_layout(pool, "test"))
    cache = RadixCache(PAGE, PageAllocator(4), LowerTiers(0, 16, KVTiers(pool, 0, disk)))
    a, b = np.asarray(prompt(1, 4), dtype=np.int32), np.asarray(prompt(2, 4), dtype=np.int32)
    run_filled(cache, pool, a, None)
    run_filled(cache, pool, b, None)  # a is on disk alone now
    disk.flush()
    (node,) = [n for n in cache.nodes() if n.tier is Tier.DISK]
    victim = disk.directory / "pages" / node.disk[2].hex()[:2] / f"{node.disk[2].hex()}.kv"
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    m, _ = run_filled(cache, pool, a, None)
    assert m.length == 0  # the node's pages load as one: the broken one drops them all
    assert cache.tiers.counters.disk_load_failures == 4
    check_tiers(cache)
    m, _ = run_filled(cache, pool, a, None)  # recomputed and cached again
    assert m.length == len(a)
    disk.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("host", [0, 3])
def test_the_kv_survives_a_round_trip_through_every_tier(tmp_path, host, dtype):
    """Every tensor of a page (K, V, and an int8 pool's scales) comes back bit for bit."""
    pool = KVPool(num_layers=2, kv_heads=2, head_dim=4, page_size=PAGE, num_pages=3, dtype=dtype)
    disk = DiskStore(tmp_path, disk_layout(pool, "test"))
    kv = KVTiers(pool, host, disk)
    g = torch.Generator().manual_seed(0)
    for t in pool.tensors():
        t.copy_(torch.randint(-100, 100, t.shape, generator=g).to(t.dtype))
    original = [t[:, [0, 1]].clone() for t in pool.tensors()]
    assert len(original) == (4 if dtype == torch.int8 else 2)
    if host:
        kv.to_host(np.array([0, 1], dtype=np.int32), np.array([2, 0], dtype=np.int32))
        kv.to_device(np.array([2, 0], dtype=np.int32), np.array([2, 1], dtype=np.int32))
        assert all(torch.equal(t[:, [2, 1]], o) for t, o in zip(pool.tensors(), original))
    entries = [DiskEntry(page_key(None, None, bytes([i]) * 8), None, None, bytes([i]) * 8) for i in range(2)]
    assert kv.write(entries, np.array([0, 1], dtype=np.int32))
    for t in pool.tensors():
        t.zero_()
    assert kv.read([e.key for e in entries], np.array([1, 2], dtype=np.int32))
    assert all(torch.equal(t[:, [1, 2]], o) for t, o in zip(pool.tensors(), original))
    disk.close()


def test_a_host_tier_larger_than_memory_is_refused_with_the_figure():
    pool = KVPool(num_layers=1, kv_heads=1, head_dim=4, page_size=PAGE, num_pages=2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"would take [\d.]+ GiB, but this machine has [\d.]+ GiB"):
        KVTiers(pool, host_pages=(1 << 50) // pool.bytes_per_page)
