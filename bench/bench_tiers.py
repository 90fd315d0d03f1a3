#!/usr/bin/env python3
"""KV tiers benchmark: an agent trace through the engine with a small device pool, alone and with
a host or a disk tier below it, side by side in one run; then a warm restart of ``radixrt serve``
on a disk cache.

1. **Tiers.** The trace (default: the tau-bench agent sessions) is replayed through the default
   model in this process, all sessions at once (``--concurrency``), each turn sent when the one
   before it has finished, generating at most ``--max-output`` tokens a turn. The device pool is
   ``--fraction`` of the trace's working set (its distinct 16-token pages; at least the longest
   prompt). Configurations: device only; device + a host tier holding the working set; device + a
   disk tier of twice the working set; and an unbounded device pool (the ceiling). Reported: the
   hit rate and the part loaded from each tier, prompt tokens computed against the trace's unique
   tokens and against the unbounded run, TTFT p50/p90, throughput, and the engine's cached tokens
   against the tiered simulation's (``cache_sim.simulate`` at the same capacities, fed the prompts
   in the order the engine admitted them; it runs one request at a time, so it knows nothing of
   requests holding pages side by side, and caches no outputs).
2. **Warm restart.** ``radixrt serve`` with a 1 GB disk cache replays the first ``--restart-limit``
   requests twice (cold, then warm), is stopped, started again on the same directory (the time
   until it is ready is reported), and replays them a third time: its hit rate against the warm
   run before the restart.

Prints a table per part, then one JSON line. Takes a few minutes on two CPU cores.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402
from workloads import working_set_pages  # noqa: E402

from radixrt.lang import Runtime, RuntimeEndpoint  # noqa: E402
from radixrt.model.loader import hf_directory  # noqa: E402
from radixrt.replay.cache_sim import simulate  # noqa: E402
from radixrt.replay.importers import load  # noqa: E402
from radixrt.replay.metrics import summarize  # noqa: E402
from radixrt.replay.replayer import Replayer, ReplayOptions  # noqa: E402
from radixrt.replay.trace import prompt_tokens  # noqa: E402
from radixrt.server.launch import ServerProcess  # noqa: E402

PAGE = 16
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
DEFAULT_TRACE = TRACES / "lmcache-agent" / "taubench"


def replay(backend, requests, args, limit: int | None = None):
    options = ReplayOptions(
        timing="max", concurrency=args.concurrency, max_output=args.max_output, limit=limit, progress=args.progress
    )
    result = Replayer(backend, options).run(requests)
    return result, summarize(result)


def tiers_part(requests, prompts: list[np.ndarray], args, per_page: int) -> tuple[list[dict], dict]:
    working = working_set_pages(prompts)
    longest = max(-(-(len(p) + args.max_output) // PAGE) for p in prompts)
    device = max(int(args.fraction * working), longest + 1)
    configs = {
        "device only": (device, 0, 0),
        "device + host": (device, working, 0),
        "device + disk": (device, 0, 2 * working),
        "unbounded device": (working + 4 * longest, 0, 0),
    }
    print(
        f"working set {working:,} pages of {PAGE} tokens ({working * per_page / 2**20:,.0f} MiB of K/V); "
        f"device pool {device:,} pages ({device / working:.1%})",
        file=sys.stderr,
    )
    rows = []
    for name, (device_pages, host_pages, disk_pages) in configs.items():
        with tempfile.TemporaryDirectory() as disk_dir:
            runtime = Runtime(
                page_size=PAGE,
                kv_cache_bytes=device_pages * per_page,
                host_cache_bytes=host_pages * per_page,
                disk_cache=disk_dir if disk_pages else None,
                disk_cache_bytes=disk_pages * per_page,
            )
            try:
                result, s = replay(runtime, requests, args)
            finally:
                runtime.shutdown()
        admitted = [r.prompt for r in sorted(result.records, key=lambda r: r.sent) if r.skipped is None]
        sim = simulate(admitted, PAGE, device_pages, engine_rules=True, host_pages=host_pages, disk_pages=disk_pages)
        rows.append(
            {
                "config": name,
                "device_pages": device_pages,
                "host_pages": host_pages,
                "disk_pages": disk_pages,
                "hit_rate": round(s["hit_rate"], 4),
                "from_host": round(s["host_cached_tokens"] / s["prompt_tokens"], 4),
                "from_disk": round(s["disk_cached_tokens"] / s["prompt_tokens"], 4),
                "computed_tokens": s["computed_tokens"],
                "unique_tokens": s["unique_prompt_tokens"],
                "ttft_p50_ms": round(1000 * s["ttft_s"]["p50"], 1),
                "ttft_p90_ms": round(1000 * s["ttft_s"]["p90"], 1),
                "requests_per_s": round(s["requests_per_s"], 2),
                "cached_tokens": s["cached_tokens"],
                "simulated_cached": sim.hit_tokens,
                "failed": s["failed"],
            }
        )
    base, host, unbounded = rows[0], rows[1], rows[3]
    goals = {
        "host_computed_vs_unbounded": round(host["computed_tokens"] / unbounded["computed_tokens"], 3),
        "ttft_p50_device_only_over_host": round(base["ttft_p50_ms"] / host["ttft_p50_ms"], 2),
        "engine_vs_simulation_cached": [round(r["cached_tokens"] / r["simulated_cached"], 4) for r in rows],
    }
    return rows, goals


def restart_part(requests, args, per_page: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        flags = ["--disk-cache", f"{tmp}/kv", "--disk-cache-gb", "1", "--page-size", str(PAGE)]
        flags += ["--kv-cache-mb", str(args.restart_device_pages * per_page / 2**20)]
        hit = {}
        server = ServerProcess(flags, f"{tmp}/serve.log")
        try:
            endpoint = RuntimeEndpoint(server.address)
            for run in ("cold", "warm"):
                hit[run] = replay(endpoint, requests, args, args.restart_limit)[1]["hit_rate"]
            endpoint.shutdown()
        finally:
            server.stop()
        started = time.perf_counter()
        server = ServerProcess(flags, f"{tmp}/serve-again.log")
        ready_s = time.perf_counter() - started
        try:
            endpoint = RuntimeEndpoint(server.address)
            hit["restarted"] = replay(endpoint, requests, args, args.restart_limit)[1]["hit_rate"]
            endpoint.shutdown()
        finally:
            server.stop()
    return {
        "requests": args.restart_limit,
        "device_pages": args.restart_device_pages,
        "cold_hit_rate": round(hit["cold"], 4),
        "warm_hit_rate": round(hit["warm"], 4),
        "restarted_hit_rate": round(hit["restarted"], 4),
        "ready_s": round(ready_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="an agent trace (default: tau-bench)")
    parser.add_argument("--fraction", type=float, default=0.125, help="device pool / working set (default 1/8)")
    parser.add_argument("--concurrency", type=int, default=24, help="sessions in flight (default 24)")
    parser.add_argument("--max-output", type=int, default=4, help="tokens generated a turn at most (default 4)")
    parser.add_argument("--restart-limit", type=int, default=150, help="requests replayed around the restart")
    parser.add_argument("--restart-device-pages", type=int, default=128, help="device pool of the restarted server")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args()
    if not Path(args.trace).exists():
        sys.exit(f"bench_tiers: no trace at {args.trace} (give --trace)")
    tokenizer = AutoTokenizer.from_pretrained(hf_directory())
    requests = load(args.trace, "auto", "stop").requests
    prompts = [prompt_tokens(r, tokenizer) for r in sorted(requests, key=lambda r: r.arrival)]
    probe = Runtime(page_size=PAGE, kv_cache_bytes=1 << 24)  # the bytes of one page of the default model
    per_page = probe.engine.pool.bytes_per_page
    probe.shutdown()
    rows, goals = tiers_part(requests, prompts, args, per_page)
    columns = list(rows[0])
    print(f"\n{Path(args.trace).name}: {len(prompts)} requests, concurrency {args.concurrency}\n")
    print(table(rows, columns))
    print("\n" + "  ".join(f"{k} {v}" for k, v in goals.items()))
    restart = None
    if not args.skip_restart:
        restart = restart_part(requests, args, per_page)
        print("\nwarm restart of `radixrt serve` on a 1 GB disk cache\n")
        print(table([restart], list(restart)))
    print(
        json.dumps({"bench": "tiers", "trace": Path(args.trace).name, "rows": rows, "goals": goals, "restart": restart})
    )


if __name__ == "__main__":
    main()
