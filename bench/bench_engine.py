#!/usr/bin/env python3
"""Engine benchmark: an agent workload on the default model, side by side in one run.

8 sessions share a ~1.5k-token system prompt with tool descriptions; each runs a ReAct loop of 4
turns whose prompt grows by the previous answer and a tool result; on the third turn half of the
sessions fork 3 ways (three different tool results). Outputs are 32-64 tokens (greedy, fixed
lengths). The sessions start together; each submits its next turn as soon as its answer is in.

Systems: radixrt with the radix cache, radixrt with it off, and transformers' ``generate`` called
per request on the same weights; radixrt runs first and again last, and its speedups are the mean
of its two runs over each row. Reported: output tokens/s, prompt tokens computed vs. total vs.
unique (the distinct prefixes of all prompts), and time to first token.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, GenerateOutput, SamplingParams  # noqa: E402
from radixrt.cache import RadixCache  # noqa: E402
from radixrt.model.loader import hf_directory  # noqa: E402

SESSIONS, TURNS, FORK_TURN, FORKS = 8, 4, 2, 3
VERBS = ["search", "book", "cancel", "list", "convert", "check", "update", "estimate", "compare", "summarize"]
NOUNS = ["flights", "hotels", "weather", "currency", "visas", "trains", "cars", "insurance", "events", "restaurants"]


def system_prompt(tokenizer, target_tokens: int = 1500) -> str:
    """Tool descriptions, deterministic, about ``target_tokens`` long."""
    rng = np.random.default_rng(0)
    lines = [
        "You are a travel agent that solves tasks step by step. Think, then call one tool per turn as "
        "Action: tool_name(arguments). You have these tools:"
    ]
    while len(tokenizer.encode("\n".join(lines))) < target_tokens:
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        args = ", ".join(f"{rng.choice(NOUNS)[:-1]}_{rng.choice(['id', 'name', 'date', 'count'])}" for _ in range(3))
        lines.append(
            f"- {verb}_{noun}({args}): {verb}s {noun} for the customer, checking availability, prices "
            f"and policies; returns a JSON list with the {noun} that match, ordered by relevance."
        )
    return "\n".join(lines)


def tool_result(session: int, turn: int, variant: int) -> str:
    rng = np.random.default_rng(1000 * session + 10 * turn + variant)
    items = ", ".join(
        f'{{"id": {int(rng.integers(1000, 9999))}, "price": {int(rng.integers(50, 900))}}}' for _ in range(6)
    )
    return f"Observation: [{items}]"


class Workload:
    """The agent sessions, each moving to its next turn as soon as its answer is in (a fork waits
    for all three branches, then continues from the first). A system serves it through
    ``submit(prompt, output_len) -> key`` and ``poll() -> [(key, result)]``."""

    def __init__(self, tokenizer, system: str) -> None:
        self.tokenizer, self.system = tokenizer, system
        self.prompts: list[list[int]] = []

    def run(self, system) -> list[dict]:
        history = [
            [
                {"role": "system", "content": self.system},
                {"role": "user", "content": f"Task {s}: plan a {3 + s}-day trip for a customer from city {s}."},
            ]
            for s in range(SESSIONS)
        ]
        turn, answers, owner, results = [0] * SESSIONS, [{} for _ in range(SESSIONS)], {}, []

        def submit_turn(s: int) -> None:
            t = turn[s]
            for v in range(FORKS if t == FORK_TURN and s % 2 == 0 else 1):
                messages = history[s] if t == 0 else history[s] + [{"role": "user", "content": tool_result(s, t, v)}]
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
                prompt = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                self.prompts.append(prompt)
                length = int(np.random.default_rng(100 * s + 10 * t + v).integers(32, 65))
                owner[system.submit(prompt, length)] = (s, v)

        for s in range(SESSIONS):
            submit_turn(s)
        while owner:
            for key, result in system.poll():
                s, v = owner.pop(key)
                results.append(result)
                answers[s][v] = result
                if any((s, _) in owner.values() for _ in range(FORKS)):
                    continue  # the other branches of this fork are still running
                if turn[s]:
                    history[s].append({"role": "user", "content": tool_result(s, turn[s], 0)})
                history[s].append({"role": "assistant", "content": answers[s][0]["text"]})
                answers[s], turn[s] = {}, turn[s] + 1
                if turn[s] < TURNS:
                    submit_turn(s)
        return results

    def unique_tokens(self) -> int:
        trie = RadixCache(page_size=1)
        for p in self.prompts:
            trie.insert(p, np.zeros(len(p), dtype=np.int32))
        return trie.total_size()


class RadixrtSystem:
    def __init__(self, model: Path, device: str, dtype: torch.dtype, enable_cache: bool) -> None:
        self.engine = Engine(str(model), device=device, dtype=dtype, enable_cache=enable_cache, kv_cache_bytes=1 << 30)
        self.outputs: dict[str, GenerateOutput] = {}

    def submit(self, prompt: list[int], length: int) -> str:
        rid = self.engine.add_request(prompt, SamplingParams(max_new_tokens=length, temperature=0, ignore_eos=True))
        self.outputs[rid] = GenerateOutput(rid, arrival=self.engine.requests[rid].arrival)
        return rid

    def poll(self) -> list[tuple[str, dict]]:
        done = []
        for out in self.engine.step():
            collected = self.outputs[out.request_id]
            collected.add(out)
            if out.finished:
                del self.outputs[out.request_id]
                done.append(
                    (
                        out.request_id,
                        {
                            "text": collected.text,
                            "output_tokens": len(collected.token_ids),
                            "ttft": collected.time_to_first_token,
                        },
                    )
                )
        return done


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


class TransformersSystem:
    """transformers' ``generate`` per request, one at a time, in submission order."""

    def __init__(self, tokenizer, model: Path, device: str, dtype: torch.dtype) -> None:
        self.tokenizer, self.device = tokenizer, device
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
        self.queue: list[tuple[int, list[int], int, float]] = []
        self.keys = itertools.count()

    def submit(self, prompt: list[int], length: int) -> int:
        key = next(self.keys)
        self.queue.append((key, prompt, length, time.perf_counter()))
        return key

    def poll(self) -> list[tuple[int, dict]]:
        key, prompt, length, submitted = self.queue.pop(0)
        clock = FirstTokenClock()
        with torch.no_grad():
            ids = self.model.generate(
                torch.tensor([prompt], device=self.device),
                max_new_tokens=length,
                min_new_tokens=length,
                do_sample=False,
                streamer=clock,
            )
        new = ids[0, len(prompt) :].tolist()
        return [
            (
                key,
                {
                    "text": self.tokenizer.decode(new, skip_special_tokens=True),
                    "output_tokens": len(new),
                    "ttft": clock.first - submitted,
                },
            )
        ]


def measure(name: str, served, tokenizer, system: str, computed) -> dict:
    workload = Workload(tokenizer, system)
    start = time.perf_counter()
    results = workload.run(served)
    wall = time.perf_counter() - start
    output_tokens = sum(r["output_tokens"] for r in results)
    total = sum(len(p) for p in workload.prompts)
    return {
        "system": name,
        "requests": len(results),
        "output_tok_per_s": round(output_tokens / wall, 1),
        "wall_s": round(wall, 2),
        "prompt_tokens": total,
        "unique_prompt_tokens": workload.unique_tokens(),
        "computed_prompt_tokens": computed() if computed else total,
        "ttft_median_s": round(statistics.median(r["ttft"] for r in results), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline (the slowest part)")
    ap.add_argument(
        "--model",
        help="a Hugging Face directory or .gguf file with the default model's tokenizer "
        "(default: the default model; bench/random_model.py makes one with random weights)",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    model = hf_directory(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model)
    system = system_prompt(tokenizer)

    def radixrt(enable_cache: bool, name: str) -> dict:
        print(f"running {name} ...", file=sys.stderr)
        served = RadixrtSystem(model, device, dtype, enable_cache)
        return measure(name, served, tokenizer, system, lambda: served.engine.stats()["computed_tokens"])

    # radixrt runs first and again last: this machine's speed drifts over minutes, and the mean of
    # the two brackets the baselines
    rows = [radixrt(True, "radixrt"), radixrt(False, "radixrt_no_cache")]
    if not args.no_transformers:
        print("running transformers generate per request ...", file=sys.stderr)
        rows.append(
            measure("transformers", TransformersSystem(tokenizer, model, device, dtype), tokenizer, system, None)
        )
    rows.append(radixrt(True, "radixrt_again"))
    ours = statistics.mean(row["output_tok_per_s"] for row in rows if row["system"] in ("radixrt", "radixrt_again"))
    for row in rows:
        row["radixrt_speedup"] = round(ours / row["output_tok_per_s"], 2)
        row["computed_over_unique"] = round(row["computed_prompt_tokens"] / row["unique_prompt_tokens"], 3)
    print(
        f"agent workload on {model.name} ({device}, {str(dtype).removeprefix('torch.')}): "
        f"{SESSIONS} sessions x {TURNS} turns, a {FORKS}-way fork on turn {FORK_TURN + 1} in half of them\n"
    )
    print(table(rows, list(rows[0])))
    print(f"\nradixrt_speedup: the mean of radixrt's two runs, {ours:.1f} output tokens/s, over the row's")
    by_name = {row["system"]: row for row in rows}
    summary = {
        "bench": "engine",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": model.name,
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
        "radixrt_output_tok_per_s": round(ours, 1),
        "speedup_vs_no_cache": by_name["radixrt_no_cache"]["radixrt_speedup"],
        "computed_over_unique": by_name["radixrt"]["computed_over_unique"],
    }
    if not args.no_transformers:
        summary["speedup_vs_transformers"] = by_name["transformers"]["radixrt_speedup"]
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
