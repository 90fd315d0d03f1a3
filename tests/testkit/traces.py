"""Traces for tests."""

from __future__ import annotations

import numpy as np

from radixrt.replay.trace import TraceRequest


def agent_trace(sessions: int = 3, turns: int = 3, seed: int = 0) -> list[TraceRequest]:
    """Sessions whose prompts grow turn by turn over a shared system prompt."""
    rng = np.random.default_rng(seed)
    system = rng.integers(10, 40000, 40).tolist()
    requests = []
    for s in range(sessions):
        history = system + rng.integers(10, 40000, 10).tolist()
        for t in range(turns):
            requests.append(
                TraceRequest(
                    f"s{s}",
                    f"s{s}-{t}",
                    arrival=0.01 * (s + t),
                    input_ids=list(history),
                    output_tokens=4,
                    parent=f"s{s}-{t - 1}" if t else None,
                )
            )
            history += rng.integers(10, 40000, 12).tolist()
    return requests
