#!/usr/bin/env python3
"""Server benchmark: what the wire and the router cost, and what cache-aware routing saves,
side by side in one run.

1. The agent workload of ``bench_engine.py`` (8 sessions, 4 turns, forks) on the default model,
   through the in-process engine and through ``radixrt serve`` with one worker, each on one torch
   thread (the router and the client get the other core). The runs go engine, server, server,
   engine, and each side's throughput is the mean of its two runs, so drift cancels.
2. The same on a 2-layer model of the default model's shape (random weights), where a step takes
   milliseconds and the per-step overhead shows.
3. The router's text deltas: 64 concurrent streams on the 2-layer model, per second of wall time
   (bounded by the worker's steps) and per second of the router's own CPU time (its capacity).
4. Two workers (one torch thread each), cache-aware routing against round-robin, on the default
   model: prompt tokens computed (against the one-worker run, where one cache holds everything),
   hit rate and throughput.
5. HTTP against ZeroMQ: the agent workload through the official ``openai`` client (streaming
   completions over ``serve --http-port``) and through the ZeroMQ client, on one server with one
   worker, runs in the order ZeroMQ, HTTP, HTTP, ZeroMQ: the throughput ratio and the time to
   first token each adds.

Prints a table per part, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import queue
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import RadixrtSystem, measure, system_prompt  # noqa: E402
from report import table  # noqa: E402

from radixrt import SamplingParams  # noqa: E402
from radixrt.client import AsyncClient, Client  # noqa: E402
from radixrt.model.loader import hf_directory  # noqa: E402
from radixrt.server.launch import ServerProcess  # noqa: E402

KV_MB = 1024  # as bench_engine's in-process engine


class ServerSystem:
    """The workload's ``submit``/``poll`` over a client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, prompt: list[int], length: int) -> str:
        return self.client.submit(prompt, SamplingParams(max_new_tokens=length, temperature=0, ignore_eos=True))

    def poll(self) -> list[tuple[str, dict]]:
        return [
            (o.request_id, {"text": o.text, "output_tokens": len(o.token_ids), "ttft": o.time_to_first_token})
            for o in self.client.finished(timeout=1.0)
        ]


class HttpSystem:
    """The workload's ``submit``/``poll`` over the OpenAI client (streamed completions, one thread
    per request in flight), generating exactly the asked length (``ignore_eos``)."""

    def __init__(self, base_url: str) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=600)
        self.pool = ThreadPoolExecutor(64)
        self.done: queue.Queue = queue.Queue()
        self.ids = itertools.count()

    def submit(self, prompt: list[int], length: int) -> str:
        rid, sent = f"h{next(self.ids)}", time.perf_counter()

        def run() -> None:
            first, text, usage = None, "", None
            for chunk in self.client.completions.create(
                model="default",
                prompt=prompt,
                max_tokens=length,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            ):
                if chunk.choices and chunk.choices[0].text:
                    first = first or time.perf_counter()
                    text += chunk.choices[0].text
                usage = chunk.usage or usage
            self.done.put(
                (
                    rid,
                    {
                        "text": text,
                        "output_tokens": usage.completion_tokens,
                        "ttft": (first or time.perf_counter()) - sent,
                    },
                )
            )

        self.pool.submit(run).add_done_callback(
            lambda f: f.exception() and self.done.put((rid, {"error": f.exception()}))
        )
        return rid

    def poll(self) -> list[tuple[str, dict]]:
        try:
            items = [self.done.get(timeout=1.0)]
        except queue.Empty:
            return []
        while not self.done.empty():
            items.append(self.done.get_nowait())
        for _, result in items:
            if "error" in result:
                raise RuntimeError(f"an HTTP request failed: {result['error']}")
        return items


def server(model: Path, workers: int, policy: str, log_dir: Path, *extra: str) -> ServerProcess:
    log = log_dir / f"serve-{model.name}-{workers}-{policy}-{time.monotonic_ns()}.log"
    return ServerProcess(
        [
            "--model",
            str(model),
            "--workers",
            str(workers),
            "--policy",
            policy,
            "--threads",
            "1",
            "--kv-cache-mb",
            str(KV_MB),
            *extra,
        ],
        log,
        env={"OMP_NUM_THREADS": "1"},
    )


def http_overhead(model: Path, tokenizer, system: str, log_dir: Path) -> tuple[list[dict], float]:
    """ZeroMQ, HTTP, HTTP, ZeroMQ, each on a fresh server; HTTP's mean throughput over ZeroMQ's."""
    rows = []
    for name in ("zeromq", "http", "http_again", "zeromq_again"):
        print(f"running {name} ...", file=sys.stderr)
        with server(model, 1, "cache_aware", log_dir, "--http-port", "0") as served, Client(served.address) as client:
            system_ = HttpSystem(served.http_url) if name.startswith("http") else ServerSystem(client)
            rows.append(measure(name, system_, tokenizer, system, lambda: client.stats()["router"]["computed_tokens"]))
    mean = lambda prefix: statistics.mean(r["output_tok_per_s"] for r in rows if r["system"].startswith(prefix))  # noqa: E731
    return rows, round(mean("http") / mean("zeromq"), 3)


def run_server(name: str, model: Path, workers: int, policy: str, tokenizer, system: str, log_dir: Path) -> dict:
    print(f"running {name} ...", file=sys.stderr)
    with server(model, workers, policy, log_dir) as served, Client(served.address) as client:
        row = measure(
            name, ServerSystem(client), tokenizer, system, lambda: client.stats()["router"]["computed_tokens"]
        )
        row["hit_rate"] = round(client.stats()["router"]["hit_rate"], 3)
    return row


def run_engine(name: str, model: Path, tokenizer, system: str) -> dict:
    print(f"running {name} ...", file=sys.stderr)
    served = RadixrtSystem(model, "cpu", torch.float32, enable_cache=True)
    row = measure(name, served, tokenizer, system, lambda: served.engine.stats()["computed_tokens"])
    row["hit_rate"] = round(served.engine.stats()["hit_rate"], 3)
    return row


def overhead(model: Path, tokenizer, system: str, log_dir: Path) -> tuple[list[dict], float]:
    """Engine, server, server, engine; the ratio of the server's mean throughput to the engine's."""
    rows = [
        run_engine("engine", model, tokenizer, system),
        run_server("serve_1_worker", model, 1, "cache_aware", tokenizer, system, log_dir),
        run_server("serve_1_worker_again", model, 1, "cache_aware", tokenizer, system, log_dir),
        run_engine("engine_again", model, tokenizer, system),
    ]
    mean = lambda prefix: statistics.mean(r["output_tok_per_s"] for r in rows if r["system"].startswith(prefix))  # noqa: E731
    return rows, round(mean("serve") / mean("engine"), 3)


def delta_rate(model: Path, log_dir: Path, streams: int = 64, tokens: int = 200) -> dict:
    print("measuring the router's delta rate ...", file=sys.stderr)
    params = SamplingParams(max_new_tokens=tokens, temperature=0, ignore_eos=True)

    async def run(address: str) -> float:
        async with AsyncClient(address) as client:

            async def consume(i: int) -> None:
                async for _ in client.stream(f"Stream number {i}: tell a story.", params):
                    pass

            start = time.perf_counter()
            await asyncio.gather(*(consume(i) for i in range(streams)))
            return time.perf_counter() - start

    with server(model, 1, "cache_aware", log_dir) as served:
        cpu = cpu_seconds(served.proc.pid)
        wall = asyncio.run(run(served.address))
        cpu = cpu_seconds(served.proc.pid) - cpu
        with Client(served.address) as client:
            deltas = client.stats()["router"]["deltas"]
    return {
        "streams": streams,
        "tokens_each": tokens,
        "deltas": deltas,
        "wall_s": round(wall, 2),
        "deltas_per_s": round(deltas / wall),
        "router_cpu_s": round(cpu, 2),
        "deltas_per_router_cpu_s": round(deltas / cpu),
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def two_layer_model(out: Path) -> Path:
    like = hf_directory()
    config = AutoConfig.from_pretrained(like)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(like).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", help="a Hugging Face directory with the default model's tokenizer (default: the default model)"
    )
    ap.add_argument("--parts", default="1,2,3,4,5", help="which parts to run (default 1,2,3,4,5)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    model = hf_directory(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    system = system_prompt(tokenizer)
    summary: dict = {"bench": "server", "device": "cpu", "model": model.name}
    parts = {int(x) for x in args.parts.split(",")}
    with tempfile.TemporaryDirectory(prefix="radixrt-bench-") as tmp:
        tmp = Path(tmp)
        tiny = two_layer_model(tmp / "two-layer") if parts & {2, 3} else None
        one_worker = None
        if 1 in parts:
            rows, ratio = overhead(model, tokenizer, system, tmp)
            print(f"\n1. wire and router overhead: agent workload on {model.name}, one torch thread each\n")
            print(table(rows, list(rows[0])))
            print(f"\nserve/engine throughput: {ratio}")
            summary.update(overhead_rows=rows, serve_over_engine=ratio)
            one_worker = next(r for r in rows if r["system"] == "serve_1_worker")
        if 2 in parts:
            tiny_rows, tiny_ratio = overhead(tiny, tokenizer, system, tmp)
            print("\n2. the same on a 2-layer model of the same shape (short steps)\n")
            print(table(tiny_rows, list(tiny_rows[0])))
            print(f"\nserve/engine throughput: {tiny_ratio}")
            summary.update(two_layer_rows=tiny_rows, two_layer_serve_over_engine=tiny_ratio)
        if 3 in parts:
            rate = delta_rate(tiny, tmp)
            print("\n3. the router's text deltas, 2-layer model, one worker\n")
            print(table([rate], list(rate)))
            summary["delta_rate"] = rate
        if 4 in parts:
            one_worker = one_worker or run_server("serve_1_worker", model, 1, "cache_aware", tokenizer, system, tmp)
            routed = [
                run_server(f"2_workers_{policy}", model, 2, policy, tokenizer, system, tmp)
                for policy in ("cache_aware", "round_robin")
            ]
            for r in routed:
                r["computed_over_one_worker"] = round(
                    r["computed_prompt_tokens"] / one_worker["computed_prompt_tokens"], 3
                )
            aware, rr = routed
            speedup = round(aware["output_tok_per_s"] / rr["output_tok_per_s"], 2)
            print(
                "\n4. two workers: cache-aware routing against round-robin (one worker computed "
                f"{one_worker['computed_prompt_tokens']:,} prompt tokens)\n"
            )
            print(table(routed, list(routed[0])))
            print(f"\ncache-aware / round-robin throughput: {speedup}")
            summary.update(
                routing_rows=routed,
                cache_aware_over_round_robin=speedup,
                cache_aware_computed_over_one_worker=aware["computed_over_one_worker"],
                round_robin_computed_over_one_worker=rr["computed_over_one_worker"],
            )
        if 5 in parts:
            http_rows, http_ratio = http_overhead(model, tokenizer, system, tmp)
            zmq_ttft = statistics.mean(r["ttft_median_s"] for r in http_rows if r["system"].startswith("zeromq"))
            http_ttft = statistics.mean(r["ttft_median_s"] for r in http_rows if r["system"].startswith("http"))
            print(f"\n5. HTTP (openai client, streaming) against ZeroMQ, agent workload on {model.name}, one worker\n")
            print(table(http_rows, list(http_rows[0])))
            print(
                f"\nhttp/zeromq throughput: {http_ratio}; median time to first token added by HTTP: "
                f"{1000 * (http_ttft - zmq_ttft):.1f} ms"
            )
            summary.update(
                http_rows=http_rows,
                http_over_zeromq=http_ratio,
                http_added_ttft_ms=round(1000 * (http_ttft - zmq_ttft), 1),
            )
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
