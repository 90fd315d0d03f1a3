"""A request's lifecycle inside the engine (what it reports is in ``outputs.py``)."""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from radixrt.cache import Node
from radixrt.cache.ids import ID_DTYPE
from radixrt.engine.output_text import OutputText
from radixrt.engine.window import KVWindow
from radixrt.params import SamplingParams

if TYPE_CHECKING:
    import torch


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(eq=False)
class Request:
    """The prompt followed by what was generated is ``tokens`` (an int32 array, grown in place);
    the first ``computed`` of them have K/V in the pool, held in ``pages`` (once a ``window`` has
    slid, only the sinks' and the window's: see ``engine/window.py``). The first ``in_tree``
    tokens' pages belong to the radix cache and are pinned through ``node``; the rest of ``pages``
    are the request's own.

    ``max_new_tokens`` is the sampling parameter clipped to what the model's context and the KV
    pool can hold. ``prompt_logprobs_from`` asks for the log-probability of every prompt token from
    that position on (how ``select`` scores a choice); the prefix served from the cache then stops
    before it, since those positions' logits must be computed. ``tenant`` is who the scheduler
    shares slots fairly between (the namespace when not given)."""

    id: str
    prompt: np.ndarray
    params: SamplingParams
    max_new_tokens: int
    namespace: Hashable = None
    tenant: Hashable = None
    arrival: float = field(default_factory=time.perf_counter)
    prompt_logprobs_from: int | None = None
    resumed: int = 0  # the prompt's last tokens that are this request's output from elsewhere (a lost worker)
    pin: bool = False  # keep its tokens cached when it ends, until ``Engine.unpin``
    score_next: tuple[int, ...] = ()  # tokens whose log-probability right after the prompt is asked for
    retain: list[tuple[int, float]] = field(default_factory=list)  # (prefix tokens, ttl s) to retain when it ends
    next_logprobs: list[float] | None = None  # theirs, once the prompt's last position is computed
    generator: torch.Generator | None = None
    output_text: OutputText | None = None  # None without a tokenizer: token ids only
    constraint: Any = None  # an xgrammar matcher when the request has a regex, JSON schema or choices
    window: KVWindow | None = None  # attention sinks and a sliding window (``kv_window``)
    state: State = State.WAITING
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=ID_DTYPE))
    node: Node | None = None
    computed: int = 0
    in_tree: int = 0
    cached_tokens: int = 0  # prompt tokens served from the cache when first admitted
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per output token, when asked for
    prompt_logprobs: list[float] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    error: str | None = None
    retractions: int = 0
    reported: int = 0  # generated tokens already reported in an output

    def __post_init__(self) -> None:
        if self.tenant is None:
            self.tenant = self.namespace
        self.prompt_len = len(self.prompt)
        self._buf = np.empty(self.prompt_len + min(self.max_new_tokens, 64), dtype=ID_DTYPE)
        self._buf[: self.prompt_len] = self.prompt
        self.length = self.prompt_len

    @property
    def tokens(self) -> np.ndarray:
        """Prompt and generated tokens (a view: valid until the next ``append``)."""
        return self._buf[: self.length]

    @property
    def output(self) -> np.ndarray:
        """The generated tokens (a view, as ``tokens``)."""
        return self._buf[self.prompt_len : self.length]

    @property
    def num_output(self) -> int:
        return self.length - self.prompt_len

    @property
    def penalty_split(self) -> int:
        """Where the tokens that penalties count as the output begin: resumed tokens are output."""
        return self.prompt_len - self.resumed

    @property
    def match_limit(self) -> int:
        """How many leading tokens may come from the cache: never the last (its logits are
        needed), nor any position whose prompt logprob is asked for."""
        limit = self.length - 1
        if self.prompt_logprobs_from is not None:
            limit = min(limit, self.prompt_logprobs_from - 1)
        if self.window is not None:
            limit = min(limit, self.window.match_limit())
        return limit

    @property
    def kv_shift(self) -> int:
        """A token's position minus its index in ``pages`` (not 0 once a window has slid)."""
        return self.window.shift if self.window is not None else 0

    @property
    def done(self) -> bool:
        return self.state in (State.FINISHED, State.ABORTED, State.FAILED)

    def append(self, token: int, logprob: float, at: float, top: list[tuple[int, float]] | None = None) -> None:
        if self.length == self._buf.size:
            self._buf = np.concatenate([self._buf, np.empty(self._buf.size, dtype=ID_DTYPE)])
        self._buf[self.length] = token
        self.length += 1
        self.logprobs.append(logprob)
        self.token_times.append(at)
        if top is not None:
            self.top_logprobs.append(top)
