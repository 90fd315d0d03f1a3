#!/usr/bin/env python3
"""Replay benchmark: simulated hit rate against cache capacity, with LRU (the engine's policy) and
the offline optimum (Belady's rule on the radix tree's leaves), for the Mooncake trace and the two
LMCache agent traces (mini-SWE-agent, tau-bench); the Mooncake LRU figures checked against the
reference table of ``../shared/traces/README.md``. Then a live replay of a slice of the
mini-SWE-agent trace through ``radixrt serve`` (one worker, the default model) with the prefix
cache on and off, and the same slice through the engine one request at a time (nothing
generated) against the simulator at equal capacity.

The shared traces are not part of the repository: without them, the Mooncake part runs on the
300-request sample in ``tests/replay/data`` and the agent parts are skipped.

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_radix import mooncake_reference  # noqa: E402
from report import table  # noqa: E402

from radixrt.lang import Runtime, RuntimeEndpoint  # noqa: E402
from radixrt.model.loader import hf_directory  # noqa: E402
from radixrt.replay.cache_sim import simulate  # noqa: E402
from radixrt.replay.importers import from_lmcache, from_mooncake  # noqa: E402
from radixrt.replay.metrics import summarize  # noqa: E402
from radixrt.replay.replayer import Replayer, ReplayOptions  # noqa: E402
from radixrt.replay.sweep import parse_capacities, sweep  # noqa: E402
from radixrt.replay.trace import TraceRequest, prompt_tokens  # noqa: E402
from radixrt.server.launch import ServerProcess  # noqa: E402

SHARED = BENCH.parents[1] / "shared" / "traces"
SAMPLE = BENCH.parent / "tests" / "replay" / "data" / "mooncake_head300.jsonl"
TOLERANCE = 0.002  # Mooncake LRU hit rates against the reference table


def simulated(name: str, prompts: list[np.ndarray], page_size: int, capacities: str) -> list[dict]:
    started = time.perf_counter()
    rows = sweep(prompts, page_size, parse_capacities(capacities))
    seconds = time.perf_counter() - started
    labels = [c.strip() for c in capacities.split(",")]
    return [
        {
            "trace": name,
            "page_size": page_size,
            "capacity": label,
            "requests": len(prompts),
            "lru_hit_rate": round(r["lru_hit_rate"], 4),
            "optimal_hit_rate": round(r["optimal_hit_rate"], 4),
            "lru_of_optimal": round(r["lru_of_optimal"], 3),
            "sweep_s": round(seconds, 1),
        }
        for label, r in zip(labels, rows)
    ]


def agent_slice(trace: list[TraceRequest], tokenizer, sessions: int, turns: int, max_tokens: int) -> list[TraceRequest]:
    """The first ``turns`` turns of the first ``sessions`` sessions whose prompts all fit in ``max_tokens``."""
    by_session: dict[str, list[TraceRequest]] = {}
    for r in trace:
        by_session.setdefault(r.session, []).append(r)
    chosen = []
    for turns_of in by_session.values():
        head = turns_of[:turns]
        if len(head) == turns and all(len(prompt_tokens(r, tokenizer)) <= max_tokens for r in head):
            chosen += head
            if len(chosen) == sessions * turns:
                break
    return chosen


def live(requests: list[TraceRequest], cache: bool, log_dir: Path, max_output: int) -> dict:
    args = ["--workers", "1", "--port", "0"] + ([] if cache else ["--no-cache"])
    with ServerProcess(args, log_dir / f"serve-{'on' if cache else 'off'}.log", env={"HF_HUB_OFFLINE": "1"}) as served:
        backend = RuntimeEndpoint(served.address)
        try:
            options = ReplayOptions(timing="max", concurrency=2, max_output=max_output, progress=False)
            summary = summarize(Replayer(backend, options).run(requests))
        finally:
            backend.shutdown()
    return {
        "cache": "on" if cache else "off",
        "requests": summary["succeeded"],
        "failed": summary["failed"],
        "prompt_tokens": summary["prompt_tokens"],
        "computed_tokens": summary["computed_tokens"],
        "unique_prompt_tokens": summary["unique_prompt_tokens"],
        "hit_rate": round(summary["hit_rate"], 4),
        "ttft_p50_s": round(summary["ttft_s"]["p50"], 3),
        "ttft_p90_s": round(summary["ttft_s"]["p90"], 3),
        "itl_p50_ms": round(1000 * summary["itl_s"]["p50"], 1),
        "e2e_p50_s": round(summary["e2e_s"]["p50"], 2),
        "e2e_p99_s": round(summary["e2e_s"]["p99"], 2),
        "output_tok_s": round(summary["output_tokens_per_s"], 2),
        "duration_s": round(summary["duration_s"], 1),
    }


def agreement(requests: list[TraceRequest], tokenizer, page_size: int, pages: int) -> dict:
    """The slice through the engine one request at a time, nothing generated, against the simulator."""
    prompts = [prompt_tokens(r, tokenizer) for r in requests]
    probe = Runtime(page_size=page_size, kv_cache_bytes=1 << 20)
    per_page = probe.engine.pool.bytes_per_token * page_size
    probe.shutdown()
    rt = Runtime(page_size=page_size, kv_cache_bytes=pages * per_page)
    try:
        trace = [TraceRequest("s", f"r{i}", input_ids=p.tolist(), output_tokens=0) for i, p in enumerate(prompts)]
        summary = summarize(Replayer(rt, ReplayOptions(timing="max", concurrency=1, progress=False)).run(trace))
        pages = rt.engine.pool.num_pages
    finally:
        rt.shutdown()
    exact, plain = simulate(prompts, page_size, pages, engine_rules=True), simulate(prompts, page_size, pages)
    engine = summary["cached_tokens"] / summary["prompt_tokens"]
    return {
        "capacity_pages": pages,
        "requests": len(prompts),
        "engine_hit_rate": round(engine, 4),
        "simulated_engine_rules": round(exact.hit_tokens / summary["prompt_tokens"], 4),
        "simulated_plain": round(plain.hit_rate, 4),
        "engine_vs_plain": round(engine / plain.hit_rate, 4) if plain.hit_rate else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller live slice")
    ap.add_argument(
        "--max-output", type=int, default=16, help="tokens generated a request in the live replay (default 16)"
    )
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(hf_directory())
    results: dict = {"bench": "replay", "quick": args.quick}

    mooncake = SHARED / "mooncake" / "conversation_trace.jsonl"
    trace = from_mooncake(mooncake if mooncake.exists() else SAMPLE)
    rows = simulated(
        "mooncake" if mooncake.exists() else "mooncake (300-request sample)",
        [prompt_tokens(r) for r in trace],
        512,
        "1k,4k,16k,64k,unlimited",
    )
    reference = mooncake_reference(SHARED / "README.md") if mooncake.exists() else None
    if reference:
        for r in rows:
            r["reference"] = reference.get(r["capacity"])
        results["mooncake_matches_reference"] = all(abs(r["lru_hit_rate"] - r["reference"]) <= TOLERANCE for r in rows)
    agents = {name: SHARED / "lmcache-agent" / name for name in ("miniswe", "taubench")}
    agent_traces = {name: from_lmcache([path]) for name, path in agents.items() if path.exists()}
    for name, requests in agent_traces.items():
        print(f"tokenizing {name} ({len(requests)} calls) ...", file=sys.stderr)
        rows += simulated(name, [prompt_tokens(r, tokenizer) for r in requests], 16, "100,300,1k,4k,unlimited")
    print("Simulated hit rate against cache capacity (pages): LRU and the offline optimum\n")
    print(table(rows, list(rows[0])))
    if "mooncake_matches_reference" in results:
        print(
            f"\nMooncake LRU against the reference table (tolerance {TOLERANCE}): "
            f"{'equal' if results['mooncake_matches_reference'] else 'DIFFERENT'}"
        )
    results["simulation"] = rows

    if "miniswe" in agent_traces:
        sessions, turns = (2, 3) if args.quick else (3, 5)
        requests = agent_slice(agent_traces["miniswe"], tokenizer, sessions, turns, max_tokens=6000)
        print(
            f"\nLive replay: {len(requests)} mini-SWE-agent calls ({sessions} sessions x {turns} turns), through "
            f"`radixrt serve` (one worker, the default model), {args.max_output} tokens generated each",
            file=sys.stderr,
        )
        with tempfile.TemporaryDirectory() as tmp:
            live_rows = [live(requests, cache, Path(tmp), args.max_output) for cache in (True, False)]
        print(f"\nLive replay of {len(requests)} mini-SWE-agent calls through serve, cache on and off\n")
        print(table(live_rows, list(live_rows[0])))
        on, off = live_rows
        print(
            f"\nthe cache computes {1 - on['computed_tokens'] / off['computed_tokens']:.0%} fewer prompt tokens; "
            f"duration off / on: {off['duration_s'] / on['duration_s']:.2f}x; p50 TTFT off / on: "
            f"{off['ttft_p50_s'] / on['ttft_p50_s']:.2f}x"
        )
        near = agent_slice(agent_traces["miniswe"], tokenizer, 4 if args.quick else 6, 3, max_tokens=3000)
        agree = agreement(near, tokenizer, 16, pages=250)  # 4,000 tokens: a prompt fits, the working set does not
        print(
            f"\n{len(near)} mini-SWE-agent calls through the engine one at a time (nothing generated) against the "
            "simulator, at equal capacity\n"
        )
        print(table([agree], list(agree)))
        results.update(live=live_rows, agreement=agree)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
