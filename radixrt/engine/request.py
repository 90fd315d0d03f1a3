"""A request's lifecycle and the output a caller gets back."""
from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from radixrt.cache import Node
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.sampling import SamplingParams


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass
class Request:
    """``tokens`` are the prompt followed by what was generated; the first ``computed`` of them
    have K/V in the pool, held in ``pages``. The first ``in_tree`` tokens' pages belong to the radix
    cache and are pinned through ``node``; the rest of ``pages`` are the request's own."""

    id: str
    prompt_len: int
    tokens: list[int]
    params: SamplingParams
    namespace: Hashable = None
    state: State = State.WAITING
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    node: Node | None = None
    computed: int = 0
    in_tree: int = 0
    cached_tokens: int = 0  # prompt tokens served from the cache when first admitted
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    text: str = ""
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    retractions: int = 0
    generator: torch.Generator | None = None
    detokenizer: IncrementalDetokenizer | None = None  # None without a tokenizer: token ids only

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def done(self) -> bool:
        return self.state in (State.FINISHED, State.ABORTED, State.FAILED)


@dataclass
class GenerateOutput:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "abort" or "error"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the radix cache
    time_to_first_token: float | None  # seconds
    decode_time: float | None  # seconds from the first token to the last
    logprobs: list[float] | None = None
    error: str | None = None

    @classmethod
    def of(cls, r: Request) -> GenerateOutput:
        ttft = None if r.first_token_at is None else r.first_token_at - r.arrival
        decode = None if r.first_token_at is None or r.finished_at is None else r.finished_at - r.first_token_at
        return cls(r.id, r.text, list(r.output), r.finish_reason, r.prompt_len, r.cached_tokens, ttft, decode,
                   list(r.logprobs) if r.params.logprobs else None, r.error)


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # sum over the choice's tokens
    num_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.num_tokens
