"""A replay's figures: tokens (total, cached, computed, and the trace's unique prompt tokens),
latencies at p50/p90/p99, throughput and errors, as ``report.json`` holds them."""

from __future__ import annotations

from typing import Any

import numpy as np

from radixrt.cache import RadixCache
from radixrt.replay.replayer import ReplayResult

PERCENTILES = (50, 90, 99)


def unique_tokens(prompts: list[np.ndarray]) -> int:
    """Prompt tokens an unbounded, token-level cache would still compute: the distinct prefixes."""
    tree = RadixCache(page_size=1)
    for prompt in prompts:
        if prompt.size:
            tree.insert(prompt, np.zeros(prompt.size, dtype=np.int32))
    return tree.total_size()


def summarize(result: ReplayResult) -> dict[str, Any]:
    sent = [r for r in result.records if r.skipped is None]
    ok = [r for r in sent if r.error is None]
    duration = result.ended - result.started
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    ttft = [r.time_to_first_token for r in ok if r.time_to_first_token is not None]
    itl = [d for r in ok for d in np.diff(r.token_times).tolist()]
    e2e = [r.finished - r.sent for r in ok]
    errors: dict[str, int] = {}
    for r in sent:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(result.records),
        "sent": len(sent),
        "succeeded": len(ok),
        "failed": len(sent) - len(ok),
        "skipped_too_long": len(result.records) - len(sent),
        "cut_to_fit": sum(r.cut for r in sent),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "computed_tokens": prompt - cached,
        "unique_prompt_tokens": unique_tokens([r.prompt for r in ok]),
        "hit_rate": cached / prompt if prompt else 0.0,
        "host_cached_tokens": result.tier_tokens[0],  # of cached_tokens, loaded back from a host tier
        "disk_cached_tokens": result.tier_tokens[1],  # and from a disk tier (the backend's counters)
        "output_tokens": output,
        "duration_s": duration,
        "requests_per_s": len(ok) / duration if duration > 0 else 0.0,
        "output_tokens_per_s": output / duration if duration > 0 else 0.0,
        "ttft_s": _percentiles(ttft),
        "itl_s": _percentiles(itl),
        "e2e_s": _percentiles(e2e),
        "errors": errors,
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
