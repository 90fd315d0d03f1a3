#!/usr/bin/env python3
"""Scheduler benchmark: the cost of one scheduling step with a long waiting queue, without a model.

The queue holds agent prompts of 4k tokens that share a 2k-token system prompt (cached) and
differ after it; 32 requests are decoding, and the KV pool is full, so every step ranks the whole
queue and fails to admit its first request: the worst case, and the usual one under overload.
Each step schedules, then marks what it scheduled as computed (prompt tokens go to the cache as in
the engine) and gives each request whose tokens are all computed a next token, as sampling would.
Only ``schedule()`` is timed.

Rows: waiting-queue lengths, with longest-prefix-match ranking (up to the queue length where the
scheduler switches to arrival order) and with ranking forced on for every length, to show what the
switch saves. Goal: at most 5 ms of scheduling per step with 1,000 waiting requests.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

import radixrt.engine.scheduler as scheduler_module  # noqa: E402
from radixrt.cache import PageAllocator, RadixCache  # noqa: E402
from radixrt.engine.request import Request  # noqa: E402
from radixrt.engine.scheduler import Scheduler  # noqa: E402
from radixrt.params import SamplingParams  # noqa: E402

PAGE_SIZE = 16
SYSTEM_TOKENS, PROMPT_TOKENS, RUNNING = 2048, 4096, 32
GOAL_MS = 5.0
FREE_PAGES = 80  # room for the decoders' next pages, not for a waiting prompt's first chunk


def make_request(rid: str, tokens: np.ndarray, arrival: float) -> Request:
    return Request(rid, tokens, SamplingParams(max_new_tokens=10_000), 10_000, arrival=arrival)


def setup(waiting: int, seed: int = 0) -> Scheduler:
    rng = np.random.default_rng(seed)
    allocator = PageAllocator(2 * RUNNING * PROMPT_TOKENS // PAGE_SIZE)
    s = Scheduler(RadixCache(PAGE_SIZE, allocator), allocator, max_batch_tokens=2048, chunk_size=1024, max_running=256)
    system = rng.integers(0, 49152, SYSTEM_TOKENS, dtype=np.int32)
    now = time.perf_counter()

    def prompt() -> np.ndarray:
        return np.concatenate([system, rng.integers(0, 49152, PROMPT_TOKENS - SYSTEM_TOKENS, dtype=np.int32)])

    for i in range(RUNNING):  # decoding already
        s.waiting.append(make_request(f"run{i}", prompt(), now - 10))
        while s.waiting:
            step(s)
    allocator.alloc(allocator.available() - FREE_PAGES)  # the rest of the pool is taken
    s.waiting = [make_request(f"wait{i}", prompt(), now + i * 1e-6) for i in range(waiting)]
    return s


def step(s: Scheduler) -> float:
    """One step; returns the seconds ``schedule()`` took."""
    t0 = time.perf_counter()
    batch = s.schedule()
    elapsed = time.perf_counter() - t0
    for req, n in batch:
        s.progress(req, n)
        if req.computed == req.length:
            req.add_pending()
            req.resolve(1, 0.0, 0.0)
    return elapsed


def measure(waiting: int, rank_all: bool, steps: int) -> dict:
    saved = scheduler_module.LPM_MAX_WAITING
    scheduler_module.LPM_MAX_WAITING = 10**9 if rank_all else saved
    try:
        s = setup(waiting)
        times = [step(s) for _ in range(steps)]
    finally:
        scheduler_module.LPM_MAX_WAITING = saved
    ranked = rank_all or waiting <= saved
    return {
        "waiting": waiting,
        "ranking": "prefix match" if ranked else "arrival order",
        "forced": rank_all,
        "steps": steps,
        "median_ms": round(statistics.median(times) * 1e3, 3),
        "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 3),
        "waiting_after": len(s.waiting),
        "retractions": s.stats.retractions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    rows = [measure(n, False, args.steps) for n in (10, 100, 1000)]
    rows += [measure(n, True, args.steps) for n in (1000,)]
    print(
        f"scheduling one step: {RUNNING} decoding, N waiting {PROMPT_TOKENS}-token prompts sharing a cached "
        f"{SYSTEM_TOKENS}-token prefix, page size {PAGE_SIZE}\n"
    )
    print(table(rows, list(rows[0])))
    at_1000 = next(r for r in rows if r["waiting"] == 1000 and not r["forced"])
    print(f"\n1,000 waiting: {at_1000['median_ms']} ms a step (goal <= {GOAL_MS} ms)")
    print(
        json.dumps(
            {
                "bench": "scheduler",
                "rows": rows,
                "ms_per_step_1000_waiting": at_1000["median_ms"],
                "goal_ms": GOAL_MS,
                "meets_goal": at_1000["median_ms"] <= GOAL_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
