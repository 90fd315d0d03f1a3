#!/usr/bin/env python3
"""Fairness benchmark: two HTTP tenants on one server, one sending ten times the other's rate.

One ``radixrt serve --http-port`` with one worker (one torch thread) and two API keys, driven by
open-loop Poisson arrivals of short completions (distinct prompts, ``max_tokens`` tokens each,
greedy, ``ignore_eos``), in three phases of ``--seconds`` each:

1. **alone**: the light tenant alone, at ``--rate`` requests per second;
2. **fair**: the light tenant as before and the heavy tenant at ten times its rate, each with its
   own key: the per-key in-flight limit (``--max-inflight``) and the engine's fair share apply;
3. **shared**: the same load with both sending under the heavy tenant's key, as one tenant (what
   a server without per-tenant limits and fair shares does to the light tenant).

Reports each tenant's p50/p99 latency (whole request, non-streaming), what it got served and what
was refused (429), and the light tenant's p99 against running alone (goal: within 2x). Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt.server.launch import ServerProcess  # noqa: E402

KEYS = {"light": "light-key", "heavy": "heavy-key"}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def tenant(
    http: httpx.AsyncClient, key: str, rate: float, seconds: float, seed: int, args: argparse.Namespace
) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds``; each request's latency or refusal."""
    rng = random.Random(seed)
    latencies: list[float] = []
    refused = failed = 0

    async def one(text: str) -> None:
        nonlocal refused, failed
        start = time.monotonic()
        body = {"prompt": text, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True}
        reply = await http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        if reply.status_code == 429:
            refused += 1
        elif reply.status_code != 200:
            failed += 1
        else:
            latencies.append(time.monotonic() - start)

    tasks, end = [], time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        tasks.append(asyncio.create_task(one(prompt(rng, args.words))))
        await asyncio.sleep(min(rng.expovariate(rate), end - now))
    await asyncio.gather(*tasks)
    return {"served": len(latencies), "refused": refused, "failed": failed, **percentiles(latencies)}


def percentiles(latencies: list[float]) -> dict:
    if len(latencies) < 2:
        return {"p50_s": latencies[0] if latencies else None, "p99_s": latencies[0] if latencies else None}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_s": statistics.median(latencies), "p99_s": cuts[98]}


async def phase(url: str, name: str, args: argparse.Namespace, heavy_key: str | None) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=None)) as http:
        runs = [tenant(http, KEYS["light"], args.rate, args.seconds, 1, args)]
        if heavy_key is not None:
            runs.append(tenant(http, heavy_key, 10 * args.rate, args.seconds, 2, args))
        results = await asyncio.gather(*runs)
    return [{"phase": name, "tenant": who, **r} for who, r in zip(("light", "heavy"), results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model to serve (default: the default model)")
    ap.add_argument("--rate", type=float, default=0.5, help="the light tenant's requests per second (default 0.5)")
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each phase (default 40)")
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated per request (default 16)")
    ap.add_argument("--words", type=int, default=48, help="words per prompt (default 48)")
    ap.add_argument("--max-inflight", type=int, default=4, help="each tenant's in-flight limit (default 4)")
    args = ap.parse_args()
    server_args = ["--http-port", "0", "--threads", "1", "--max-inflight", str(args.max_inflight)]
    server_args += [flag for key in KEYS.values() for flag in ("--api-key", key)]
    if args.model:
        server_args += ["--model", args.model]
    print(f"serving with {' '.join(server_args)} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(server_args, Path(tmp) / "serve.log") as server:
        rows = []
        for name, heavy in (("alone", None), ("fair", KEYS["heavy"]), ("shared", KEYS["light"])):
            print(f"phase {name}: {args.seconds:.0f} s ...", file=sys.stderr)
            rows += asyncio.run(phase(server.http_url, name, args, heavy))
    alone = next(r for r in rows if r["phase"] == "alone")["p99_s"]
    for row in rows:
        if row["tenant"] == "light" and alone and row["p99_s"] is not None:
            row["p99_vs_alone"] = row["p99_s"] / alone
    print(table(rows, ["phase", "tenant", "served", "refused", "failed", "p50_s", "p99_s", "p99_vs_alone"]))
    fair = next(r for r in rows if r["phase"] == "fair" and r["tenant"] == "light")
    print(json.dumps({"rows": rows, "args": vars(args), "light_p99_vs_alone": fair.get("p99_vs_alone")}))


if __name__ == "__main__":
    main()
