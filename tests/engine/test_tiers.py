"""The engine with a host and a disk tier: what a tier loads back is exact (the same greedy tokens
as computing it), hits count as cached, and a restart on the same disk directory starts warm."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from radixrt import Engine, SamplingParams
from radixrt.cache.disk_store import DiskCacheBusy
from testkit.engines import check_pages, prompts

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

GREEDY = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
PAGE = 16


def small(model: str, pages: int = 12, kv_dtype: str = "auto", **tiers) -> Engine:
    """An engine whose device pool holds ``pages`` pages of the tiny model."""
    probe = Engine(model, page_size=PAGE, kv_cache_bytes=1 << 20, kv_dtype=kv_dtype)
    return Engine(model, page_size=PAGE, kv_cache_bytes=pages * probe.pool.bytes_per_page, kv_dtype=kv_dtype, **tiers)


def conversations(n: int = 6) -> list[list[int]]:
    """Prompts that each share a trunk with the others and come back later: a device of 12 pages
    cannot keep them all, a host tier can."""
    return prompts(n, shared=48, own=80, seed=3)


@pytest.mark.parametrize("eviction, kv_dtype", [("lru", "auto"), ("adaptive", "auto"), ("lru", "int8"), ("lru", "fp8")])
def test_host_tier_loads_back_exact_kv_and_counts_it_as_cached(tiny, eviction, kv_dtype):
    """Quantized pages move with their scales: the tiered engine reads a prefix loaded from the host
    exactly as an engine with room for everything on the device reads it."""
    batch = conversations()
    roomy = Engine(tiny, page_size=PAGE, kv_cache_bytes=8 << 20, kv_dtype=kv_dtype)
    expected = [[roomy.generate(p, GREEDY).token_ids for p in batch] for _ in range(2)]
    device_only = small(tiny, eviction=eviction, kv_dtype=kv_dtype)
    tiered = small(tiny, host_cache_bytes=64 * device_only.pool.bytes_per_page, eviction=eviction, kv_dtype=kv_dtype)
    assert [[tiered.generate(p, GREEDY).token_ids for p in batch] for _ in range(2)] == expected
    for _ in range(2):
        [device_only.generate(p, GREEDY) for p in batch]
    for engine in (device_only, tiered):
        check_pages(engine)
    alone, both = device_only.stats(), tiered.stats()
    assert both["host_hit_tokens"] > 0 and both["host_loads"] > 0 and both["host_stores"] > 0
    assert both["cached_tokens"] > alone["cached_tokens"] and both["cached_tokens"] == roomy.stats()["cached_tokens"]
    assert both["computed_tokens"] == both["prompt_tokens"] - both["cached_tokens"]
    assert both["pages_host"] <= both["pages_host_total"] == 64


def test_a_restart_on_the_same_disk_directory_starts_warm(tiny, tmp_path):
    batch = conversations(4)
    first = small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 24)
    expected = [first.generate(p, GREEDY).token_ids for p in batch]
    assert first.stats()["disk_writes"] > 0
    first.close()
    second = small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 24)
    assert second.stats()["pages_disk"] == first.stats()["pages_disk"]
    outs = [second.generate(p, GREEDY) for p in batch]
    assert [o.token_ids for o in outs] == expected
    assert all(o.cached_tokens == (len(p) - 1) // PAGE * PAGE for o, p in zip(outs, batch))  # all but the last
    assert second.stats()["disk_hit_tokens"] > 0 and second.stats()["disk_load_failures"] == 0
    second.close()


def test_two_engines_cannot_share_a_disk_directory(tiny, tmp_path):
    first = small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 22)
    with pytest.raises(DiskCacheBusy, match="in use by process"):
        small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 22)
    first.close()
    small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 22).close()


def test_pages_of_another_model_are_never_loaded(tiny, tmp_path, tmp_path_factory, caplog):
    torch.manual_seed(1)
    cfg = LlamaConfig.from_pretrained(tiny)
    other = tmp_path_factory.mktemp("other")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(other)  # same shapes, other weights
    batch = conversations(2)
    first = small(tiny, disk_cache=tmp_path, disk_cache_bytes=1 << 22)
    for p in batch:
        first.generate(p, GREEDY)
    first.close()
    with caplog.at_level(logging.WARNING, logger="radixrt.cache.disk"):
        second = small(str(other), disk_cache=tmp_path, disk_cache_bytes=1 << 22)
    assert "model" in caplog.text
    assert second.stats()["pages_disk"] == 0
    assert second.generate(batch[0], GREEDY).cached_tokens == 0
    second.close()


def test_tier_sizes_and_the_policy_are_checked(tiny, tmp_path):
    with pytest.raises(ValueError, match="lru, adaptive"):
        small(tiny, eviction="fifo")
    with pytest.raises(ValueError, match="holds no page"):
        small(tiny, host_cache_bytes=10)
    with pytest.raises(ValueError, match="needs a size"):
        small(tiny, disk_cache=tmp_path)
    with pytest.raises(ValueError, match="but this machine has"):
        small(tiny, host_cache_bytes=1 << 50)


def test_flush_empties_every_tier(tiny, tmp_path):
    engine = small(tiny, host_cache_bytes=1 << 22, disk_cache=tmp_path, disk_cache_bytes=1 << 22)
    for p in conversations(4):
        engine.generate(p, GREEDY)
    assert engine.flush_cache()
    stats = engine.stats()
    assert stats["pages_cached"] == stats["pages_host"] == stats["pages_disk"] == 0
    engine.close()
