#!/usr/bin/env python3
"""Attention sinks and a window (StreamingLLM) against dense attention, past the model's context.

One long English text (CPython's own documentation topics, ``pydoc_data.topics``, shipped with
every Python: text the tests never train on) is scored token by token by the default model
(SmolLM2-135M-Instruct, 8,192-token context) three ways, each as one request with
``prompt_logprobs_from=1``:

- **dense**: every token attends to all before it (the engine's context limit is lifted for this
  measurement only, so that it can run past it; ``--dense-tokens``, since it costs the square);
- **window**: ``kv_window=--window`` alone (no sinks);
- **sinks + window**: ``sink_tokens=--sinks`` as well (StreamingLLM's four).

The windowed runs prefill ``kv_window / 4`` tokens a step, so a token sees between W and 1.25 W
earlier tokens (and the sinks). Reported: perplexity per span of positions (``--span``), and over
the positions inside and past the context. StreamingLLM's claim to check: sinks + window stays flat
past the context, where dense breaks down and the window alone degrades. Also reported: the most
KV pages each run held at once (a window's memory is bounded; dense grows with the text).

Prints the table, then one JSON line. About a quarter of an hour on two CPU cores with the defaults
(the dense run's cost grows with the square of ``--dense-tokens``).
"""

from __future__ import annotations

import argparse
import json
import math
import pydoc_data.topics
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402


def long_text() -> str:
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def score(engine: Engine, tokens: list[int], params: SamplingParams, label: str) -> tuple[np.ndarray, int]:
    """The prompt's token log-probabilities and the most pages the request held."""
    rid = engine.add_request(tokens, params, prompt_logprobs_from=1)
    req, most, out = engine.requests[rid], 0, None
    with tqdm(total=len(tokens), desc=label, unit="tok", file=sys.stderr, leave=False) as bar:
        while engine.has_work():
            for o in engine.step():
                if o.request_id == rid and o.finished:
                    out = o
            most = max(most, req.pages.size)
            bar.update(req.computed - bar.n)
    if out.error:
        raise RuntimeError(f"{label}: {out.error}")
    return np.asarray(out.prompt_logprobs), most


def perplexity(logprobs: np.ndarray) -> float | None:
    return round(float(math.exp(-logprobs.mean())), 3) if logprobs.size else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20480, help="text length scored by the windowed runs")
    parser.add_argument("--dense-tokens", type=int, default=12288, help="text length scored densely")
    parser.add_argument("--window", type=int, default=1024, help="kv_window (tokens)")
    parser.add_argument("--sinks", type=int, default=4, help="sink_tokens of the sinks + window run")
    parser.add_argument("--span", type=int, default=2048, help="positions per row of the table")
    parser.add_argument("--page-size", type=int, default=16)
    args = parser.parse_args()

    engine = Engine(page_size=args.page_size, chunk_size=512, kv_cache_bytes=(args.dense_tokens + 2048) * 23040 * 2)
    context = engine.max_context
    text = engine.tokenizer(long_text())["input_ids"]
    if len(text) < max(args.tokens, args.dense_tokens):
        parser.error(f"the text has {len(text)} tokens, fewer than asked for")
    greedy = dict(max_new_tokens=1, temperature=0)
    runs: dict[str, tuple[np.ndarray, int]] = {}
    for label, n, params in (
        ("dense", args.dense_tokens, SamplingParams(**greedy)),
        ("window", args.tokens, SamplingParams(**greedy, kv_window=args.window)),
        ("sinks + window", args.tokens, SamplingParams(**greedy, kv_window=args.window, sink_tokens=args.sinks)),
    ):
        engine.max_context = 1 << 30 if label == "dense" else context  # dense past the context: measured, not served
        logprobs, most = score(engine, text[:n], params, label)
        runs[label] = (logprobs, most)
        engine.flush_cache()
    engine.max_context = context

    rows = []
    for lo in range(0, args.tokens, args.span):
        row = {"positions": f"{lo}-{lo + args.span - 1}"}
        for label, (logprobs, _) in runs.items():
            row[label] = perplexity(logprobs[lo : lo + args.span])  # logprobs[i] scores token i + 1
        rows.append(row)
    inside = {label: perplexity(lp[: context - 1]) for label, (lp, _) in runs.items()}
    past = {label: perplexity(lp[context - 1 :]) for label, (lp, _) in runs.items()}
    rows.append({"positions": f"< {context}", **inside})
    rows.append({"positions": f">= {context}", **past})
    rows.append({"positions": "most pages held", **{label: most for label, (_, most) in runs.items()}})
    print(
        f"Perplexity by position: {len(text[: args.tokens]):,} tokens of pydoc topics, SmolLM2-135M "
        f"(context {context}), kv_window {args.window}, sinks {args.sinks}, page {args.page_size}"
    )
    print(table(rows, ["positions", *runs]))
    print(
        json.dumps(
            {
                "context": context,
                "window": args.window,
                "sinks": args.sinks,
                "perplexity_inside_context": inside,
                "perplexity_past_context": past,
                "most_pages": {label: most for label, (_, most) in runs.items()},
                "by_span": rows[:-4],
            }
        )
    )


if __name__ == "__main__":
    main()
