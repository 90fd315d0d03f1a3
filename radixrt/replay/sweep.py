"""Capacity sweeps: a trace's prompts through the cache alone, at several capacities, with LRU
(what the engine does) and with the offline optimum (Belady's rule on the radix tree's leaves),
the ceiling no online policy can pass."""

from __future__ import annotations

import re

import numpy as np

from radixrt.replay.cache_sim import simulate
from radixrt.replay.optimal import simulate_optimal

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


def parse_capacities(text: str) -> list[int | None]:
    """``"1k,4k,16k,64k,unlimited"`` -> ``[1000, 4000, 16000, 64000, None]`` (pages, k and m decimal as in the
    trace references; None is unlimited)."""
    capacities: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part.lower() in ("unlimited", "inf", "none"):
            capacities.append(None)
            continue
        match = _SIZE.match(part)
        if match is None:
            raise ValueError(f"capacity {part!r}: expected a number of pages such as 4096, 4k or 1m, or 'unlimited'")
        value = float(match.group(1)) * {"": 1, "k": 1000, "m": 1000**2}[match.group(2).lower()]
        if value < 1:
            raise ValueError(f"capacity {part!r}: at least one page")
        capacities.append(int(value))
    return capacities


def sweep(
    prompts: list[np.ndarray], page_size: int, capacities: list[int | None], host_pages: int = 0, disk_pages: int = 0
) -> list[dict]:
    """One row per device capacity: LRU's, the adaptive policy's and the optimum's hit rates (whole
    pages of prompt tokens served from the cache), and the first two's as fractions of the optimum's. With host or disk
    pages, also the hit rate of the device with those tiers below it, and each tier's share."""
    unlimited = sum(-(-len(p) // page_size) for p in prompts) + 1
    rows = []
    for capacity in capacities:
        lru = simulate(prompts, page_size, capacity or unlimited)
        adaptive = simulate(prompts, page_size, capacity or unlimited, policy="adaptive")
        best = simulate_optimal(prompts, page_size, capacity)
        row = {
            "capacity_pages": capacity,
            "capacity_tokens": capacity * page_size if capacity else None,
            "lru_hit_rate": lru.hit_rate,
            "adaptive_hit_rate": adaptive.hit_rate,
            "optimal_hit_rate": best.hit_rate,
            "lru_of_optimal": lru.hit_rate / best.hit_rate if best.hit_rate else 1.0,
            "adaptive_of_optimal": adaptive.hit_rate / best.hit_rate if best.hit_rate else 1.0,
        }
        if (host_pages or disk_pages) and capacity:
            tiered = simulate(prompts, page_size, capacity, host_pages=host_pages, disk_pages=disk_pages)
            host, disk = (
                n / tiered.tokens if tiered.tokens else 0.0 for n in (tiered.host_hit_tokens, tiered.disk_hit_tokens)
            )
            row |= {"tiered_hit_rate": tiered.hit_rate, "host_hit_rate": host, "disk_hit_rate": disk}
        rows.append(row)
    return rows
