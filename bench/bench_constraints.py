#!/usr/bin/env python3
"""Constrained decoding cost: the same batch of requests decoded with and without a JSON-schema
constraint, side by side in one run, on the default model (or ``--model``). Reports the time per
decode step of each and, for the constrained run, the time spent filling and applying the token
masks per step (goal: under 10% of a decode step).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402
from radixrt.engine.constraints import Grammars  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "city", "tags"],
}


MASK_TIMES: list[float] = []
_mask = Grammars.__call__


def _timed_mask(self: Grammars, logits, requests) -> None:
    start = time.perf_counter()
    _mask(self, logits, requests)
    MASK_TIMES.append(time.perf_counter() - start)


Grammars.__call__ = _timed_mask  # the benchmark's stopwatch around each step's masking


def run(engine: Engine, batch: int, tokens: int, constrained: bool) -> dict:
    params = [
        SamplingParams(
            max_new_tokens=tokens,
            temperature=1.0,
            seed=i,
            ignore_eos=not constrained,
            json_schema=SCHEMA if constrained else None,
        )
        for i in range(batch)
    ]
    for i, p in enumerate(params):
        engine.add_request(f"Person {i}, as JSON:", p)
    steps, decode_times = 0, []
    while engine.has_work():
        start = time.perf_counter()
        outs = engine.step()
        if outs and all(len(o.token_ids) <= 1 for o in outs) and steps > 0:
            decode_times.append(time.perf_counter() - start)
        steps += 1
    return {"steps": steps, "step_ms_median": round(1000 * statistics.median(decode_times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a Hugging Face directory or .gguf file (default: the default model)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    engine = Engine(args.model)
    free = run(engine, args.batch, args.tokens, constrained=False)
    constrained = run(engine, args.batch, args.tokens, constrained=True)
    mask_ms = 1000 * statistics.median(MASK_TIMES)
    rows = [
        {"run": "free", **free, "mask_ms_median": 0.0},
        {"run": "json_schema", **constrained, "mask_ms_median": round(mask_ms, 3)},
    ]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{args.batch} requests decoding {args.tokens} tokens on {engine.model_path.name} ({device})\n")
    print(table(rows, list(rows[0])))
    share = mask_ms / constrained["step_ms_median"]
    print(f"\nmasking: {share:.1%} of a constrained decode step")
    print(
        json.dumps(
            {
                "bench": "constraints",
                "device": device,
                "batch": args.batch,
                "rows": rows,
                "mask_share_of_step": round(share, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
