#!/usr/bin/env python3
"""radixrt.lang benchmark: three frontend programs, each run through ``radixrt.lang`` on an
in-process ``Runtime`` with the prefix cache on and on one with it off, side by side in one run
(and, unless ``--quick``, on a third with the cache on and page size 1, as the cache keeps whole
pages only). Each mode gets a fresh ``Runtime``; the cache is flushed before each workload.

Workloads (the programs of ``examples/``, imported from there):

- ``tree_of_thought``: one question, 3 thoughts, each forked again 2 ways (nested forks), with
  ``select`` checks and a final ``select`` (greedy);
- ``self_consistency``: 5 forks (3 with ``--quick``) sample a reasoning line (temperature 0.7, the
  program's own setting) and a ``dtype=int`` answer;
- ``few_shot_batch``: ``run_batch`` of 8 few-shot ``select`` programs (4 with ``--quick``) that
  share their few-shot prefix (greedy).

Every request the programs send is recorded (``Runtime.submit``) to count the workload's unique
prompt tokens: the distinct token-prefix positions of all its prompts, what a perfect prefix cache
would compute. Reported per workload and mode: requests, prompt tokens, prompt tokens computed
(engine counters, before/after), unique tokens, computed / unique, hit rate and wall time. Goal:
with the cache on, computed within 1.05x of unique. Tokens that a ``gen`` decoded and a later
prompt repeats are counted once as unique positions but were computed while decoding (not as
prompt tokens), so computed / unique can fall below 1.

Also reported: the floor, what a perfect page-size-1 cache computes given that the engine never
serves a request's last prompt token from the cache (its logits are needed; the cache keeps K/V,
not logits), nor a position whose prompt logprob is asked for. ``select`` scores each choice in a
request of its own (the prompt plus the choice, logprobs from the choice on), so each choice
recomputes the prompt's last token: k choices cost k - 1 tokens above the unique count.

Constrained decoding: the per-step mask time (``bench_constraints.py``'s stopwatch around
``Grammars.__call__``, counting only steps with a constrained request) is reported for the
constrained steps of the runs above (the ``dtype=int`` answers of self_consistency), against the
whole step's time; ``bench_constraints.py`` measures it on a larger constrained batch.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from report import table  # noqa: E402

import radixrt.lang as sgl  # noqa: E402
from radixrt.cache import RadixCache  # noqa: E402
from radixrt.engine.constraints import Grammars  # noqa: E402

EXAMPLES = BENCH.parent / "examples"
GOAL = 1.05
EXTRA_REVIEWS = [
    ("Nothing works and the manual is useless.", "negative"),
    ("Lovely little cafe with the best coffee in town.", "positive"),
]


MASK_TIMES: list[float] = []  # seconds, per call that masked at least one request's logits
_mask = Grammars.__call__


def _timed_mask(self: Grammars, logits, requests) -> None:
    """bench_constraints.py's stopwatch, counting only the calls with a constrained request (the
    engine calls it on every step once a constraint has been seen)."""
    constrained = any(r.constraint is not None for r in requests)
    start = time.perf_counter()
    _mask(self, logits, requests)
    if constrained:
        MASK_TIMES.append(time.perf_counter() - start)


Grammars.__call__ = _timed_mask


def load_example(name: str):
    """An example script as a module, without running its ``main``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingRuntime(sgl.Runtime):
    """A ``Runtime`` that keeps every request's prompt ids, and times the engine steps that apply
    token masks."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.prompts: list[list[int]] = []
        self.masked_steps: list[tuple[float, float]] = []  # (step seconds, of which masking)
        self._record_lock = threading.Lock()
        step = self.engine.step

        def timed_step():
            masks = len(MASK_TIMES)
            start = time.perf_counter()
            outputs = step()
            if len(MASK_TIMES) > masks:
                self.masked_steps.append((time.perf_counter() - start, sum(MASK_TIMES[masks:])))
            return outputs

        self.engine.step = timed_step  # the loop looks the method up on each step

    def submit(self, input_ids, params, **kwargs):
        with self._record_lock:
            self.prompts.append((list(input_ids), kwargs.get("prompt_logprobs_from")))
        return super().submit(input_ids, params, **kwargs)


def unique_tokens(prompts: list[tuple[list[int], int | None]]) -> int:
    """The distinct token-prefix positions of the prompts (a page-size-1 radix tree's size)."""
    trie = RadixCache(page_size=1)
    for ids, _ in prompts:
        if ids:
            trie.insert(ids, np.zeros(len(ids), dtype=np.int32))
    return trie.total_size()


def floor_tokens(prompts: list[tuple[list[int], int | None]]) -> int:
    """What a perfect prefix cache (page size 1) computes: each distinct prefix position once, except
    that a request computes its own tail from where the engine lets it match (``match_limit``: never
    its last token, whose logits it needs, nor a position whose prompt logprob it asks for)."""
    trie: dict = {}
    nodes, tails, own = 0, set(), 0
    for ids, logprobs_from in prompts:
        limit = len(ids) - 1 if logprobs_from is None else min(len(ids) - 1, logprobs_from - 1)
        node = trie
        for depth, token in enumerate(ids):
            if token not in node:
                nodes += 1
                node[token] = {}
            node = node[token]
            if depth >= limit:
                tails.add(id(node))
                own += 1
    return nodes + own - len(tails)


def workloads(quick: bool) -> dict:
    tot, sc, few = (load_example(n) for n in ("lang_tree_of_thought", "lang_self_consistency", "lang_few_shot_select"))
    reviews = [r for r, _ in few.REVIEWS + EXTRA_REVIEWS][: 4 if quick else 8]
    samples = 3 if quick else sc.NUM_SAMPLES

    def tree_of_thought() -> list:
        return [tot.tree_of_thought.run(question=tot.QUESTION, temperature=0)]

    def self_consistency() -> list:
        return [sc.self_consistency.run(question=sc.QUESTION, num_samples=samples, temperature=0)]

    def few_shot_batch() -> list:
        return few.classify.run_batch([{"review": r} for r in reviews], temperature=0)

    return {"tree_of_thought": tree_of_thought, "self_consistency": self_consistency, "few_shot_batch": few_shot_batch}


def measure(rt: RecordingRuntime, name: str, program, mode: str, page_size: int) -> dict:
    print(f"running {name} (cache {mode}, page size {page_size}) ...", file=sys.stderr)
    if not rt.flush_cache():  # each workload starts from an empty cache
        raise RuntimeError("could not flush the cache between workloads")
    before = rt.stats()
    rt.prompts.clear()
    start = time.perf_counter()
    states = program()
    errors = [st.error() for st in states]  # waits for every state to finish
    wall = time.perf_counter() - start
    after = rt.stats()
    if any(errors):
        raise RuntimeError(f"{name}: the program failed: {next(e for e in errors if e)}")
    prompt, cached, computed = (after[k] - before[k] for k in ("prompt_tokens", "cached_tokens", "computed_tokens"))
    unique, floor = unique_tokens(rt.prompts), floor_tokens(rt.prompts)
    return {
        "workload": name,
        "cache": mode,
        "page_size": page_size,
        "requests": len(rt.prompts),
        "prompt_tokens": prompt,
        "computed_tokens": computed,
        "unique_tokens": unique,
        "floor_tokens": floor,
        "computed_over_unique": round(computed / unique, 3) if unique else None,
        "computed_over_floor": round(computed / floor, 3) if floor else None,
        "hit_rate": round(cached / prompt, 3) if prompt else 0.0,
        "wall_s": round(wall, 2),
    }


def run_mode(cache: bool, page_size: int, quick: bool) -> tuple[list[dict], list[tuple[float, float]], str]:
    """Every workload on a fresh ``Runtime``; its rows, its masked steps and the model's name."""
    rt = RecordingRuntime(enable_cache=cache, page_size=page_size)
    try:
        warm = load_example("lang_few_shot_select")
        warm.classify.run(review="Fine.", temperature=0, backend=rt).sync()  # first-call costs out of the timings
        rows = [
            measure(rt, name, lambda p=program: _on(rt, p), "on" if cache else "off", page_size)
            for name, program in workloads(quick).items()
        ]
        return rows, list(rt.masked_steps), rt.engine.model_path.name
    finally:
        rt.shutdown()


def _on(rt: RecordingRuntime, program):
    """Run ``program`` with ``rt`` as the default backend."""
    sgl.set_default_backend(rt)
    try:
        return program()
    finally:
        sgl.set_default_backend(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--page-size",
        type=int,
        default=16,
        help="KV page size (default 16, the engine's); the cache "
        "holds whole pages only, so a cache-on run with page size 1 is added for comparison (not with "
        "--quick)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer samples and programs, and no page-size-1 run")
    args = ap.parse_args()
    modes = [(True, args.page_size), (False, args.page_size)]
    if args.page_size != 1 and not args.quick:
        modes.append((True, 1))
    results, masked, model = {}, [], ""
    for cache, page_size in modes:
        rows, steps, model = run_mode(cache, page_size, args.quick)
        results[cache, page_size] = rows
        masked += steps
    rows = [row for group in zip(*results.values()) for row in group]  # workload by workload
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"radixrt.lang programs on {model} ({device})\n")
    print(table(rows, list(rows[0])))
    print()
    on_rows, off_rows = results[True, args.page_size], results[False, args.page_size]
    for on, off in zip(on_rows, off_rows):
        saved = 1 - on["computed_tokens"] / off["computed_tokens"] if off["computed_tokens"] else 0.0
        speedup = off["wall_s"] / on["wall_s"] if on["wall_s"] else float("nan")
        print(
            f"{on['workload']:>16}: the cache computes {saved:.0%} fewer prompt tokens; wall time off / on: "
            f"{speedup:.2f}x"
        )
    goal = {}
    for (cache, page_size), group in results.items():
        if cache:
            worst = max(r["computed_over_unique"] for r in group if r["computed_over_unique"] is not None)
            goal[f"page_size_{page_size}"] = {"worst_computed_over_unique": worst, "met": worst <= GOAL}
            worst_floor = max(r["computed_over_floor"] for r in group if r["computed_over_floor"] is not None)
            goal[f"page_size_{page_size}"]["worst_computed_over_floor"] = worst_floor
            print(
                f"goal (cache on, page size {page_size}): computed prompt tokens within {GOAL}x of unique: "
                f"{'met' if worst <= GOAL else 'NOT met'} (worst {worst:.3f}x; against the floor, "
                f"worst {worst_floor:.3f}x)"
            )
    mask = None
    if masked:
        mask_ms = 1000 * statistics.median(m for _, m in masked)
        step_ms = 1000 * statistics.median(st for st, _ in masked)
        mask = {
            "steps": len(masked),
            "mask_ms_median": round(mask_ms, 3),
            "mask_ms_mean": round(1000 * statistics.fmean(m for _, m in masked), 3),
            "step_ms_median": round(step_ms, 2),
            "share_of_step": round(mask_ms / step_ms, 4),
        }
        print(
            f"constrained decoding: {len(masked)} steps with token masks; masking {mask_ms:.3f} ms median "
            f"({mask['mask_ms_mean']:.3f} ms mean) = {mask_ms / step_ms:.1%} of the {step_ms:.1f} ms median step "
            "(bench_constraints.py measures a larger constrained batch)"
        )
    print(
        json.dumps(
            {
                "bench": "lang",
                "device": device,
                "model": model,
                "page_size": args.page_size,
                "quick": args.quick,
                "rows": rows,
                "goal": GOAL,
                "goal_computed_over_unique": goal,
                "mask": mask,
            }
        )
    )


if __name__ == "__main__":
    main()
