"""What the router keeps: requests in flight, workers, questions to the workers, and counters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radixrt.cache import Node
from radixrt.engine.output_text import OutputText
from radixrt.outputs import GenerateOutput
from radixrt.params import SamplingParams
from radixrt.server.routing import WorkerView
from radixrt.wire import protocol as p


@dataclass(eq=False)
class Job:
    """A request in flight: ``key`` is the name workers know it by, ``id`` the client's."""

    key: str
    client: bytes
    id: str
    prompt: np.ndarray
    params: SamplingParams
    namespace: str | None
    stream: bool
    prompt_logprobs_from: int | None
    text: OutputText | None
    output: GenerateOutput  # what the workers sent so far, put together (token times in Unix time)
    worker: str | None = None
    route: Node | None = None
    resubmits: int = 0
    pin: bool = False
    score_next: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.output.token_ids


@dataclass(eq=False)
class WorkerState:
    info: p.Register
    identity: bytes
    view: WorkerView
    last_seen: float
    jobs: set[str] = field(default_factory=set)


@dataclass
class StatsRequest:
    """A client's question to every worker (``get_stats``, or ``flush_cache`` when ``flush``)."""

    client: bytes
    waiting: set[str]
    deadline: float
    flush: bool = False
    replies: dict[str, dict] = field(default_factory=dict)


@dataclass
class Counters:
    requests: int = 0
    finished: int = 0
    aborted: int = 0
    failed: int = 0
    refused: int = 0
    resubmitted: int = 0
    deltas: int = 0
    bad_frames: int = 0
    clients_lost: int = 0
    workers_lost: int = 0
    output_tokens: int = 0


TOTALS = ("prompt_tokens", "cached_tokens", "computed_tokens", "decode_tokens", "evicted_pages", "retractions",
          "failed_requests")


def router_stats(counters: Counters, replies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The router's counters with the workers' totals and the hit rate over all of them."""
    totals = {k: sum(s.get(k, 0) for s in replies.values()) for k in TOTALS}
    hit_rate = totals["cached_tokens"] / totals["prompt_tokens"] if totals["prompt_tokens"] else 0.0
    return {**counters.__dict__, **totals, "hit_rate": hit_rate}
