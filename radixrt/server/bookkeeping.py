"""What the router keeps: requests in flight, workers, questions to the workers, and counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radixrt.cache import Node
from radixrt.engine.output_text import OutputText, text_token_count
from radixrt.outputs import GenerateOutput, RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire import protocol as p


@dataclass(eq=False)
class Job:
    """A request in flight: ``key`` is the name workers know it by, ``id`` the client's. Its
    prompt, parameters and text state come from the intake, before it goes to a worker."""

    key: str
    client: bytes
    id: str
    namespace: str | None
    tenant: str
    stream: bool
    prompt_logprobs_from: int | None
    output: GenerateOutput  # what the workers sent so far, put together (token times in Unix time)
    pin: bool = False
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    params: SamplingParams = field(default_factory=SamplingParams)
    text: OutputText | None = None
    score_next: list[int] = field(default_factory=list)
    retain: list[tuple[int, float]] = field(default_factory=list)  # (prefix tokens, ttl seconds)
    route_key: str | None = None
    worker: str | None = None
    route: Node | None = None
    resubmits: int = 0

    def submit(self, tokens: np.ndarray) -> p.Submit:
        """The worker's order for this job: ``tokens`` are its prompt and what it generated so far."""
        params = p.wire_sampling(self.params, stop=[], max_new_tokens=self.params.max_new_tokens - len(self.tokens))
        return p.Submit(
            self.key,
            tokens.tolist(),
            params,
            self.namespace,
            self.prompt_logprobs_from,
            len(self.tokens),
            self.pin,
            self.score_next,
            self.tenant,
            self.retain,
        )

    @property
    def tokens(self) -> list[int]:
        return self.output.token_ids

    def take(self, out: p.TokenOutput) -> bool:
        """Add a worker's news (how the request ends is judged here, not there); True if a stop
        string ended it."""
        self.output.add(p.from_wire(RequestOutput, out, finished=False))
        if not self.resubmits:
            self.output.cached_tokens = out.cached_tokens
        watch = self.text is not None and (self.stream or self.params.stop) and not out.finished  # see result()
        return bool(watch) and self.text.feed(self.tokens, False, False) is not None

    def delta(self, out: p.TokenOutput) -> p.Delta:
        """The step's news for a streaming client: the text that is safe to show."""
        text = self.text.take() if self.text else ""
        return p.to_wire(
            p.Delta,
            out,
            id=self.id,
            text=text,
            prompt_tokens=int(self.prompt.size),
            cached_tokens=self.output.cached_tokens,
        )

    def result(self, reason: str, out: p.TokenOutput | None, error: str | None) -> GenerateOutput:
        """The whole output, ended for ``reason`` (a stop string the last tokens complete makes it "stop")."""
        result = self.output
        result.matched_stop = out.matched_stop if out is not None else None
        stop_token = result.matched_stop is not None
        if self.text is not None:
            if self.text.feed(self.tokens, stop_token, final=True) is not None:
                reason, result.matched_stop = "stop", self.text.matched
            result.text = self.text.text
        result.finish_reason, result.error = reason, error or (out.error if out is not None else None)
        result.text_token_count = text_token_count(self.text, self.tokens, stop_token)
        result.prompt_tokens = int(self.prompt.size)
        if out is not None:
            result.prompt_logprobs, result.next_logprobs = out.prompt_logprobs, out.next_logprobs
        return result


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


TOTALS = (
    "prompt_tokens",
    "cached_tokens",
    "computed_tokens",
    "decode_tokens",
    "evicted_pages",
    "retractions",
    "failed_requests",
    "host_hit_tokens",
    "disk_hit_tokens",
)


def router_stats(counters: Counters, replies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The router's counters with the workers' totals and the hit rate over all of them."""
    totals = {k: sum(_number(s.get(k)) for s in replies.values()) for k in TOTALS}
    hit_rate = totals["cached_tokens"] / totals["prompt_tokens"] if totals["prompt_tokens"] else 0.0
    return {**counters.__dict__, **totals, "hit_rate": hit_rate}


def _number(value: Any) -> int | float:
    """A worker's figure as a number to add (anything else counts as 0: a worker's stats are its word)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
