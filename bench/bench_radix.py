#!/usr/bin/env python3
"""Radix cache benchmark: hit rates and cache-call speed on agent-like request streams.

Every request runs the engine's admission path: match_prefix -> lock -> allocate pages for the
uncached tail (evicting least recently used pages, exactly as many as needed, when the pool is
full) -> insert -> unlock. Capacities count pages ("blocks") of the run's page size; the Mooncake
trace runs at page size 512, so a page is one of its hash blocks.

Streams: synthetic agent sessions, tree-of-thought and few-shot streams (bench/workloads.py), and
the Mooncake conversation trace when ../shared/traces/mooncake/ is there; its block hit rates are
checked against the reference figures in ../shared/traces/README.md.

When ../shared/peers/ is there, the same request files are replayed through SGLang's RadixCache in
the same run and the speed ratio (requests per second of cache-call time) is reported.

Prints tables, then one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402
from workloads import SYNTHETIC  # noqa: E402

from radixrt.replay.cache_sim import CacheReplay, simulate  # noqa: E402
from radixrt.replay.mooncake import BLOCK_SIZE, block_tokens, load_mooncake  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAPACITIES = {"1k": 1000, "4k": 4000, "16k": 16000, "64k": 64000, "unlimited": None}  # decimal, as the trace reference
MOONCAKE_TOLERANCE = 0.002
PEER_MOONCAKE_REQUESTS = 2000  # the peer reads JSON: the whole trace would be ~1 GB of it


def best_of(repeats: int, run: Callable[[], CacheReplay]) -> CacheReplay:
    """Hit rates are deterministic; speed is the median run's."""
    runs = [run() for _ in range(repeats)]
    return sorted(runs, key=lambda r: r.cache_s)[len(runs) // 2]


def mooncake_reference(readme: Path) -> dict[str, float] | None:
    """The block hit rates that ../shared/traces/README.md publishes for the Mooncake trace."""
    if not readme.exists():
        return None
    text = readme.read_text()
    head = re.search(r"^\|\s*cache capacity[^\n]*$", text, re.M)
    row = re.search(r"^\|\s*block hit rate[^\n]*$", text, re.M)
    if not head or not row:
        return None
    names = [c.strip() for c in head.group(0).strip("|").split("|")[1:]]
    values = [float(c) for c in row.group(0).strip("|").split("|")[1:]]
    return dict(zip(names, values))


def write_requests(path: Path, prompts: Iterable[np.ndarray]) -> None:
    with open(path, "w") as f:
        for tokens in prompts:
            f.write(json.dumps({"tokens": tokens.tolist()}) + "\n")


def peer_python() -> str | None:
    setup = SHARED / "peers" / "setup_sglang.sh"
    if not setup.exists():
        return None
    print("setting up SGLang's radix cache for the side-by-side run (first time: a minute) ...", file=sys.stderr)
    out = subprocess.run(["bash", str(setup)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"peer setup failed, skipping the comparison:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return out.stdout.strip().splitlines()[-1]


def run_peer(python: str, requests: Path, page_size: int, capacity_tokens: int) -> dict:
    cmd = [
        python,
        str(SHARED / "peers" / "sglang_radix_replay.py"),
        str(requests),
        "--page-size",
        str(page_size),
        "--capacity-tokens",
        str(capacity_tokens),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_by_side(python: str, runs: list[tuple[str, list[np.ndarray], int, int | None]], repeats: int) -> list[dict]:
    """Each run through our cache and the peer's, alternating so that each pair sees the same
    machine; the ratio is the median over pairs of requests/s of cache-call time."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prompts, page_size, capacity in tqdm(runs, desc="sglang side by side", file=sys.stderr, leave=False):
            path = Path(tmp) / f"{name}.jsonl"
            write_requests(path, prompts)
            pages = capacity or sum(len(t) // page_size for t in prompts)
            ours, theirs = [], []
            for _ in range(repeats):
                ours.append(simulate(prompts, page_size, pages))
                theirs.append(run_peer(python, path, page_size, (capacity or 0) * page_size))
            rows.append(
                {
                    "stream": name,
                    "requests": len(prompts),
                    "page_size": page_size,
                    "capacity": capacity or "unlimited",
                    "radixrt_req_per_s": round(statistics.median(o.requests / o.cache_s for o in ours), 1),
                    "sglang_req_per_s": statistics.median(t["requests_per_s"] for t in theirs),
                    "ratio": round(
                        statistics.median(o.requests / o.cache_s / t["requests_per_s"] for o, t in zip(ours, theirs)), 2
                    ),
                    "radixrt_hit": round(ours[0].hit_rate, 4),
                    "sglang_hit": theirs[0]["token_hit_rate"],
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per synthetic configuration; speed is the median (default 3)"
    )
    ap.add_argument("--no-peer", action="store_true", help="skip the side-by-side run of SGLang's radix cache")
    ap.add_argument("--no-mooncake", action="store_true", help="skip the Mooncake trace")
    ap.add_argument("--mooncake", type=Path, default=SHARED / "traces" / "mooncake" / "conversation_trace.jsonl")
    args = ap.parse_args()

    streams = {name: make() for name, make in SYNTHETIC.items()}
    results, configs = [], [(s, p, c) for s in streams for p in (1, 16) for c in CAPACITIES]
    for name, page_size, cap in tqdm(configs, desc="synthetic streams", file=sys.stderr, leave=False):
        prompts = streams[name]
        pages = CAPACITIES[cap] or sum(len(t) // page_size for t in prompts)
        r = best_of(args.repeats, lambda: simulate(prompts, page_size, pages))
        results.append({"stream": name, "page_size": page_size, "capacity": cap, **r.figures()})

    mooncake = None if args.no_mooncake or not args.mooncake.exists() else load_mooncake(args.mooncake)
    mooncake_hits = {}
    if mooncake:
        for cap in tqdm(CAPACITIES, desc="mooncake trace", file=sys.stderr, leave=False):
            pages = CAPACITIES[cap] or sum(len(q.hash_ids) for q in mooncake)
            r = simulate((block_tokens(q.hash_ids) for q in mooncake), BLOCK_SIZE, pages)
            results.append({"stream": "mooncake", "page_size": BLOCK_SIZE, "capacity": cap, **r.figures()})
            mooncake_hits[cap] = round(r.hit_rate, 4)

    columns = [
        "stream",
        "page_size",
        "capacity",
        "requests",
        "hit_rate",
        "requests_per_s",
        "match_ops_per_s",
        "insert_ops_per_s",
        "evict_ops_per_s",
        "match_tokens_per_s",
    ]
    print("radix cache: match -> lock -> alloc/evict -> insert -> unlock, cache-call time only\n")
    print(table(results, columns))

    summary: dict = {
        "bench": "radix",
        "streams": {
            n: {"requests": len(p), "mean_tokens": round(float(np.mean([len(t) for t in p])), 1)}
            for n, p in streams.items()
        },
        "results": results,
    }
    if mooncake:
        reference = mooncake_reference(SHARED / "traces" / "README.md")
        summary["mooncake_hit_rate"] = mooncake_hits
        if reference:
            diffs = {c: round(mooncake_hits[c] - reference[c], 4) for c in mooncake_hits if c in reference}
            summary["mooncake_reference"] = reference
            summary["mooncake_max_abs_diff"] = max(abs(d) for d in diffs.values())
            summary["mooncake_matches_reference"] = summary["mooncake_max_abs_diff"] <= MOONCAKE_TOLERANCE
            print("\nMooncake block hit rate vs. the reference figures (tolerance 0.002)\n")
            print(
                table(
                    [
                        {
                            "capacity": c,
                            "radixrt": mooncake_hits[c],
                            "reference": reference.get(c),
                            "diff": diffs.get(c),
                        }
                        for c in mooncake_hits
                    ],
                    ["capacity", "radixrt", "reference", "diff"],
                )
            )

    python = None if args.no_peer else peer_python()
    if python:
        runs = [(name, prompts, 1, None) for name, prompts in streams.items()]
        runs.append(("agent_evicting_16k_pages", streams["agent"], 1, CAPACITIES["16k"]))
        runs.append(("agent_page16_evicting_4k_pages", streams["agent"], 16, CAPACITIES["4k"]))
        if mooncake:
            runs.append(
                ("mooncake", [block_tokens(q.hash_ids) for q in mooncake[:PEER_MOONCAKE_REQUESTS]], BLOCK_SIZE, None)
            )
        rows = side_by_side(python, runs, args.repeats)
        print("\nSide by side with SGLang's RadixCache: same request files, median of adjacent pairs\n")
        print(table(rows, list(rows[0])))
        summary["vs_sglang"] = {row["stream"]: row["ratio"] for row in rows}
        summary["vs_sglang_detail"] = rows
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
