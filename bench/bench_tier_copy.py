#!/usr/bin/env python3
"""Host tier copy benchmark: how fast ``KVTiers`` moves pages between the device's KV pool and the
host tier, against the copy engine's own peak, and whether a load overlaps compute.

A KV pool shaped like the default model's (30 layers, 3 KV heads of 64, 16-token pages; bf16 on a
GPU, float32 on a CPU) and a host tier (pinned memory on CUDA). Measured, for batches of
``--pages`` scattered pages: device -> host (an eviction), host -> device (a load), in GB/s of K/V;
the peak is one contiguous copy of the same bytes between pinned host memory and the device. Then
a matmul loop alone, and the same loop with loads issued between its steps: the overlap is how much
of the loads' time the loop hides (0: none, the copies run on the compute stream).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt.cache import KVPool  # noqa: E402
from radixrt.cache.kv_tiers import KVTiers  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn, repeats: int) -> float:
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=256, help="pages per copy (default 256)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pool = KVPool(
        num_layers=30, kv_heads=3, head_dim=64, page_size=16, dtype=dtype, device=device, num_pages=4 * args.pages
    )
    tiers = KVTiers(pool, host_pages=2 * args.pages)
    rng = np.random.default_rng(0)
    pages = rng.permutation(pool.num_pages)[: args.pages].astype(np.int32)
    slots = rng.permutation(2 * args.pages)[: args.pages].astype(np.int32)
    nbytes = args.pages * pool.bytes_per_page
    store = timed(device, lambda: tiers.to_host(pages, slots), args.repeats)
    load = timed(device, lambda: tiers.to_device(slots, pages), args.repeats)
    flat = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device == "cuda")
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    peak = timed(device, lambda: target.copy_(flat, non_blocking=True), args.repeats)
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    compute = timed(device, lambda: [a @ a for _ in range(4)], args.repeats)
    both = timed(device, lambda: [(a @ a, tiers.to_device(slots, pages)) for _ in range(4)], args.repeats)
    overlap = max(0.0, min(1.0, (compute + 4 * load - both) / (4 * load)))
    gb = lambda s: round(nbytes / s / 1e9, 2)  # noqa: E731
    rows = [
        {"copy": "device -> host (evict)", "GB/s": gb(store), "of peak": round(peak / store, 3)},
        {"copy": "host -> device (load)", "GB/s": gb(load), "of peak": round(peak / load, 3)},
        {"copy": "contiguous pinned -> device (peak)", "GB/s": gb(peak), "of peak": 1.0},
    ]
    print(f"{device}: {args.pages} pages of {pool.bytes_per_page / 2**10:.0f} KiB ({nbytes / 2**20:.0f} MiB) a copy\n")
    print(table(rows, ["copy", "GB/s", "of peak"]))
    print(f"\nloads hidden behind compute: {overlap:.0%}")
    print(json.dumps({"bench": "tier_copy", "device": device, "rows": rows, "load_overlap": round(overlap, 3)}))


if __name__ == "__main__":
    main()
