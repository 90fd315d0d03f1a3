#!/usr/bin/env python3
"""Engine benchmark: an agent workload on the default model, side by side in one run.

8 sessions share a ~1.5k-token system prompt with tool descriptions; each runs a ReAct loop of 4
turns whose prompt grows by the previous answer and a tool result; on the third turn half of the
sessions fork 3 ways (three different tool results). Outputs are 32-64 tokens (greedy, fixed
lengths). All sessions' requests of a turn are submitted together.

Systems: radixrt with the radix cache, radixrt with it off, and transformers' ``generate`` called
per request on the same weights. Reported: output tokens/s, prompt tokens computed vs. total vs.
unique (the distinct prefixes of all prompts), and time to first token.

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
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402
from radixrt.cache import RadixCache  # noqa: E402
from radixrt.model.loader import converted_dir, default_gguf  # noqa: E402

SESSIONS, TURNS, FORK_TURN, FORKS = 8, 4, 2, 3
VERBS = ["search", "book", "cancel", "list", "convert", "check", "update", "estimate", "compare", "summarize"]
NOUNS = ["flights", "hotels", "weather", "currency", "visas", "trains", "cars", "insurance", "events", "restaurants"]


def system_prompt(tokenizer, target_tokens: int = 1500) -> str:
    """Tool descriptions, deterministic, about ``target_tokens`` long."""
    rng = np.random.default_rng(0)
    lines = ["You are a travel agent that solves tasks step by step. Think, then call one tool per turn as "
             "Action: tool_name(arguments). You have these tools:"]
    while len(tokenizer.encode("\n".join(lines))) < target_tokens:
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        args = ", ".join(f"{rng.choice(NOUNS)[:-1]}_{rng.choice(['id', 'name', 'date', 'count'])}" for _ in range(3))
        lines.append(f"- {verb}_{noun}({args}): {verb}s {noun} for the customer, checking availability, prices "
                     f"and policies; returns a JSON list with the {noun} that match, ordered by relevance.")
    return "\n".join(lines)


def tool_result(session: int, turn: int, variant: int) -> str:
    rng = np.random.default_rng(1000 * session + 10 * turn + variant)
    items = ", ".join(f'{{"id": {int(rng.integers(1000, 9999))}, "price": {int(rng.integers(50, 900))}}}' for _ in range(6))
    return f"Observation: [{items}]"


class Workload:
    """Runs the agent loop through ``serve(list of token-id prompts, list of output lengths)``
    and records every prompt (for the unique-token count)."""

    def __init__(self, tokenizer, system: str) -> None:
        self.tokenizer, self.system = tokenizer, system
        self.prompts: list[list[int]] = []

    def run(self, serve) -> list[dict]:
        rng = np.random.default_rng(7)
        history = [[{"role": "system", "content": self.system},
                    {"role": "user", "content": f"Task {s}: plan a {3 + s}-day trip for a customer from city {s}."}]
                   for s in range(SESSIONS)]
        results = []
        for turn in range(TURNS):
            batch, owners = [], []
            for s in range(SESSIONS):
                variants = FORKS if turn == FORK_TURN and s % 2 == 0 else 1
                for v in range(variants):
                    messages = history[s] if turn == 0 else history[s] + [{"role": "user", "content": tool_result(s, turn, v)}]
                    batch.append(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))
                    owners.append((s, v))
            batch = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in batch]
            lengths = [int(n) for n in rng.integers(32, 65, len(batch))]
            self.prompts += batch
            outs = serve(batch, lengths)
            results += outs
            for (s, v), out in zip(owners, outs):
                if v == 0:
                    if turn:
                        history[s].append({"role": "user", "content": tool_result(s, turn, 0)})
                    history[s].append({"role": "assistant", "content": out["text"]})
        return results

    def unique_tokens(self) -> int:
        trie = RadixCache(page_size=1)
        for p in self.prompts:
            trie.insert(p, np.zeros(len(p), dtype=np.int32))
        return trie.total_size()


def radixrt_system(enable_cache: bool):
    engine = Engine(enable_cache=enable_cache, kv_cache_bytes=1 << 30)

    def serve(prompts, lengths):
        ids = [engine.add_request(p, SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)) for p, n in zip(prompts, lengths)]
        while any(not engine.requests[i].done for i in ids):
            engine.step()
        outs = [engine.requests.pop(i) for i in ids]
        return [{"text": r.text, "output_tokens": len(r.output), "ttft": r.first_token_at - r.arrival} for r in outs]

    return engine, serve


class FirstTokenClock:
    """A ``generate`` streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.puts, self.first = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def transformers_system(tokenizer):
    hf = AutoModelForCausalLM.from_pretrained(converted_dir(default_gguf()), dtype=torch.float32).eval()

    def serve(prompts, lengths):
        outs = []
        for p, n in zip(prompts, lengths):
            clock, start = FirstTokenClock(), time.perf_counter()
            with torch.no_grad():
                ids = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
            new = ids[0, len(p):].tolist()
            outs.append({"text": tokenizer.decode(new, skip_special_tokens=True), "output_tokens": len(new), "ttft": clock.first - start})
        return outs

    return serve


def measure(name: str, serve, tokenizer, system: str, computed) -> dict:
    workload = Workload(tokenizer, system)
    start = time.perf_counter()
    results = workload.run(serve)
    wall = time.perf_counter() - start
    output_tokens = sum(r["output_tokens"] for r in results)
    total = sum(len(p) for p in workload.prompts)
    return {"system": name, "requests": len(results), "output_tok_per_s": round(output_tokens / wall, 1), "wall_s": round(wall, 2),
            "prompt_tokens": total, "unique_prompt_tokens": workload.unique_tokens(),
            "computed_prompt_tokens": computed() if computed else total,
            "ttft_median_s": round(statistics.median(r["ttft"] for r in results), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline (the slowest part)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for enable_cache in (True, False):
        engine, serve = radixrt_system(enable_cache)
        system = system_prompt(engine.tokenizer)
        name = "radixrt" if enable_cache else "radixrt_no_cache"
        print(f"running {name} ...", file=sys.stderr)
        rows.append(measure(name, serve, engine.tokenizer, system, lambda e=engine: e.stats()["computed_tokens"]))
    if not args.no_transformers:
        print("running transformers generate per request ...", file=sys.stderr)
        rows.append(measure("transformers", transformers_system(engine.tokenizer), engine.tokenizer, system, None))
    base = rows[0]
    for row in rows:
        row["radixrt_speedup"] = round(base["output_tok_per_s"] / row["output_tok_per_s"], 2)
        row["computed_over_unique"] = round(row["computed_prompt_tokens"] / row["unique_prompt_tokens"], 3)
    print(f"agent workload on SmolLM2-135M-Instruct ({'cuda' if torch.cuda.is_available() else 'cpu'}): "
          f"{SESSIONS} sessions x {TURNS} turns, a {FORKS}-way fork on turn {FORK_TURN + 1} in half of them\n")
    print(table(rows, list(rows[0])))
    summary = {"bench": "engine", "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "rows": rows,
               "speedup_vs_no_cache": round(rows[0]["output_tok_per_s"] / rows[1]["output_tok_per_s"], 2),
               "computed_over_unique": rows[0]["computed_over_unique"]}
    if not args.no_transformers:
        summary["speedup_vs_transformers"] = round(rows[0]["output_tok_per_s"] / rows[2]["output_tok_per_s"], 2)
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
