"""``radixrt replay TRACE``: simulate the cache over a trace (``--simulate``), or replay it live
through a running server (``--server``) or the in-process engine (``--engine``); print the
figures and, with ``--out DIR``, write ``report.json`` and the plots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from radixrt.engine_args import engine_kwargs
from radixrt.replay.importers import FORMATS, load


def add_parser(commands: Any, engine_options: Any) -> None:
    rep = commands.add_parser(
        "replay",
        help="replay a recorded workload (trace) through the server or engine, or simulate its cache",
        description="Replay TRACE (docs/trace-format.md; Mooncake, LMCache agent traces and chat logs are read too) "
        "live through a running server (--server) or the engine in this process (--engine, the default), "
        "or simulate the prefix cache alone at several capacities (--simulate), with LRU and the offline "
        "optimum. Sessions are closed loops: a turn is sent when the previous one has finished.",
    )
    rep.add_argument(
        "trace", help="a trace file (JSONL), a chat-log .json file, or a directory of LMCache agent traces"
    )
    rep.add_argument("--format", choices=FORMATS, default="auto", help="the trace's format (default: from the file)")
    where = rep.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="ADDRESS", help="replay through `radixrt serve` at tcp://HOST:PORT")
    where.add_argument("--engine", action="store_true", help="replay through the engine in this process (the default)")
    where.add_argument(
        "--simulate", action="store_true", help="simulate the cache alone (no model): LRU and the optimum"
    )
    rep.add_argument(
        "--capacity",
        default="1k,4k,16k,64k,unlimited",
        help="cache capacities in pages to simulate (with --simulate, or with --out after a live replay; "
        "k = 1000; default 1k,4k,16k,64k,unlimited)",
    )
    rep.add_argument(
        "--host-capacity",
        type=int,
        default=0,
        metavar="PAGES",
        help="with --simulate: also simulate each capacity with a host tier of this many pages below it",
    )
    rep.add_argument(
        "--disk-capacity",
        type=int,
        default=0,
        metavar="PAGES",
        help="with --simulate: also simulate each capacity with a disk tier of this many pages below it",
    )
    rep.add_argument(
        "--timing",
        choices=["recorded", "rate", "max"],
        default="recorded",
        help="when sessions start: at their recorded times (default), at --rate sessions/s, or all at once",
    )
    rep.add_argument(
        "--rate", type=float, default=1.0, help="sessions started per second with --timing rate (default 1)"
    )
    rep.add_argument("--speedup", type=float, default=1.0, help="divide recorded times by this (default 1)")
    rep.add_argument("--concurrency", type=int, default=64, help="sessions in flight at once (default 64)")
    rep.add_argument("--limit", type=int, help="replay only the first K requests (by arrival)")
    rep.add_argument(
        "--max-output", type=int, help="generate at most this many tokens a request (default: as recorded)"
    )
    rep.add_argument(
        "--long",
        choices=["skip", "cut"],
        default="skip",
        help="prompts longer than the model takes: skip them (default) or keep their beginning; counted either way",
    )
    rep.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        default="stop",
        help="a malformed trace line stops the replay (default) or is skipped, and reported",
    )
    rep.add_argument("--out", metavar="DIR", help="write report.json and the plots (PNG) here")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    engine_options(rep)
    rep.set_defaults(run=replay, page_size=None)  # default: a hash trace's block size with --simulate, else 16


def replay(args: argparse.Namespace) -> int:
    try:
        trace = load(args.trace, args.format, args.on_error)
    except (OSError, ValueError) as e:
        print(f"radixrt replay: {e}", file=sys.stderr)
        return 2
    for message in trace.errors:
        print(f"radixrt replay: skipped {message}", file=sys.stderr)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "trace": str(args.trace),
        "requests": len(trace.requests),
        "malformed_lines": trace.errors,
    }
    try:
        report.update(_simulate(args, trace.requests, out) if args.simulate else _live(args, trace.requests, out))
    except (OSError, ValueError) as e:
        print(f"radixrt replay: {e}", file=sys.stderr)
        return 2
    if out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {out / 'report.json'}", file=sys.stderr)
    return 0


def _simulate(args: argparse.Namespace, requests: list, out: Path | None) -> dict[str, Any]:
    from radixrt.replay.trace import prompt_tokens

    blocks = {r.block_size for r in requests if r.block_size is not None}
    page_size = args.page_size or (blocks.pop() if len(blocks) == 1 else 16)
    tokenizer = _tokenizer(args) if any(r.prompt is not None or r.messages is not None for r in requests) else None
    prompts = [prompt_tokens(r, tokenizer) for r in sorted(requests, key=lambda r: r.arrival)][: args.limit]
    if args.host_capacity < 0 or args.disk_capacity < 0:
        raise ValueError("--host-capacity and --disk-capacity are page counts >= 0")
    tiers = (args.host_capacity, args.disk_capacity)
    result = {"mode": "simulate", **_sweep(prompts, page_size, args.capacity, out, tiers)}
    result["plots"] = result.pop("sweep_plots")
    return result


def _sweep(
    prompts: list, page_size: int, capacities: str, out: Path | None, tiers: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    """LRU and the optimum at each capacity (and LRU with the lower tiers, when given): printed,
    and plotted into ``out``."""
    from radixrt.replay.plots import hit_rate_vs_capacity
    from radixrt.replay.sweep import parse_capacities, sweep

    started = time.perf_counter()
    rows = sweep(prompts, page_size, parse_capacities(capacities), *tiers)
    print(
        f"\n{len(prompts)} requests, pages of {page_size} tokens, simulated in {time.perf_counter() - started:.1f} s\n"
    )
    tiered = any(tiers)
    head = f"{'capacity (pages)':>17} {'LRU hit rate':>13} {'adaptive':>9} {'optimum':>9} {'LRU / optimum':>14}"
    head += f" {'adaptive / optimum':>19}"
    if tiered:
        head += f" {'with tiers':>11} {'from host':>10} {'from disk':>10}"
        print(f"lower tiers: host {tiers[0]:,} pages, disk {tiers[1]:,} pages")
    print(head)
    for r in rows:
        capacity = "unlimited" if r["capacity_pages"] is None else f"{r['capacity_pages']:,}"
        line = f"{capacity:>17} {r['lru_hit_rate']:>13.4f} {r['adaptive_hit_rate']:>9.4f} {r['optimal_hit_rate']:>9.4f}"
        line += f" {r['lru_of_optimal']:>14.3f} {r['adaptive_of_optimal']:>19.3f}"
        if "tiered_hit_rate" in r:
            line += f" {r['tiered_hit_rate']:>11.4f} {r['host_hit_rate']:>10.4f} {r['disk_hit_rate']:>10.4f}"
        print(line)
    plots = [hit_rate_vs_capacity(rows, out / "hit_rate_vs_capacity.png").name] if out is not None else []
    return {
        "page_size": page_size,
        "host_pages": tiers[0],
        "disk_pages": tiers[1],
        "simulation": rows,
        "sweep_plots": plots,
    }


def _live(args: argparse.Namespace, requests: list, out: Path | None) -> dict[str, Any]:
    from radixrt.lang import Runtime, RuntimeEndpoint
    from radixrt.replay.metrics import summarize
    from radixrt.replay.plots import latency_cdfs, over_time
    from radixrt.replay.replayer import Replayer, ReplayOptions

    options = ReplayOptions(
        timing=args.timing,
        rate=args.rate,
        speedup=args.speedup,
        concurrency=args.concurrency,
        limit=args.limit,
        long_prompts=args.long,
        max_output=args.max_output,
        progress=not args.no_progress,
    )
    options.check()
    if args.server:
        backend = RuntimeEndpoint(args.server, keys=args.keys)
    else:
        print(f"loading {args.model or 'the default model (SmolLM2-135M-Instruct)'} ...", file=sys.stderr, flush=True)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        backend = Runtime(args.model, **engine_kwargs(args))
    try:
        result = Replayer(backend, options).run(requests)
    finally:
        backend.shutdown()
    summary = summarize(result)
    _print_summary(summary)
    report: dict[str, Any] = {"mode": "server" if args.server else "engine", "summary": summary}
    if out is not None:
        report["plots"] = [
            latency_cdfs(result, out / "latency_cdfs.png").name,
            over_time(result, out / "over_time.png").name,
        ]
        sent = [r for r in result.records if r.skipped is None]
        report.update(_sweep([r.prompt for r in sent], args.page_size or 16, args.capacity, out))
        report["plots"] += report.pop("sweep_plots")
        report["per_request"] = [
            {
                "id": r.id,
                "session": r.session,
                "sent": r.sent - result.started,
                "finished": r.finished - result.started,
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "output_tokens": r.output_tokens,
                "ttft": r.time_to_first_token,
                "error": r.error,
                "skipped": r.skipped,
                "cut": r.cut,
            }
            for r in result.records
        ]
    return report


def _print_summary(s: dict[str, Any]) -> None:
    ms = lambda v: "-" if v is None else f"{1000 * v:.1f}"  # noqa: E731
    print(
        f"requests: {s['succeeded']} succeeded, {s['failed']} failed, {s['skipped_too_long']} skipped (too long), "
        f"{s['cut_to_fit']} cut to fit"
    )
    print(
        f"prompt tokens: {s['prompt_tokens']:,} total, {s['cached_tokens']:,} cached, "
        f"{s['computed_tokens']:,} computed; "
        f"unique in the trace: {s['unique_prompt_tokens']:,}; hit rate {s['hit_rate']:.1%}"
    )
    if s["host_cached_tokens"] or s["disk_cached_tokens"]:
        print(
            f"of the cached tokens, loaded back from the host tier: {s['host_cached_tokens']:,}, "
            f"from the disk tier: {s['disk_cached_tokens']:,}"
        )
    print(
        f"throughput: {s['requests_per_s']:.2f} requests/s, {s['output_tokens_per_s']:.1f} output tokens/s "
        f"over {s['duration_s']:.1f} s"
    )
    for name in ("ttft_s", "itl_s", "e2e_s"):
        p = s[name]
        print(f"{name[:-2]:>5} ms: p50 {ms(p['p50'])}, p90 {ms(p['p90'])}, p99 {ms(p['p99'])}")
    for error, count in s["errors"].items():
        print(f"error ({count}x): {error}")


def _tokenizer(args: argparse.Namespace) -> Any:
    from transformers import AutoTokenizer

    from radixrt.model.loader import hf_directory

    return AutoTokenizer.from_pretrained(hf_directory(args.model))
