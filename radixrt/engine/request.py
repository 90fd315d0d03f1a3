"""A request's lifecycle, the output each step reports for it, and the whole output a caller collects."""
from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from radixrt.cache import Node
from radixrt.cache.ids import ID_DTYPE
from radixrt.engine.output_text import OutputText
from radixrt.engine.sampling import SamplingParams


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"


class RequestFailed(RuntimeError):
    """A request ended with finish reason "error"; the message names the cause."""


@dataclass(eq=False)
class Request:
    """The prompt followed by what was generated is ``tokens`` (an int32 array, grown in place);
    the first ``computed`` of them have K/V in the pool, held in ``pages``. The first ``in_tree``
    tokens' pages belong to the radix cache and are pinned through ``node``; the rest of ``pages``
    are the request's own.

    ``max_new_tokens`` is the sampling parameter clipped to what the model's context and the KV
    pool can hold. ``prompt_logprobs_from`` asks for the log-probability of every prompt token from
    that position on (how ``select`` scores a choice); the prefix served from the cache then stops
    before it, since those positions' logits must be computed."""

    id: str
    prompt: np.ndarray
    params: SamplingParams
    max_new_tokens: int
    namespace: Hashable = None
    arrival: float = field(default_factory=time.perf_counter)
    prompt_logprobs_from: int | None = None
    generator: torch.Generator | None = None
    output_text: OutputText | None = None  # None without a tokenizer: token ids only
    state: State = State.WAITING
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=ID_DTYPE))
    node: Node | None = None
    computed: int = 0
    in_tree: int = 0
    cached_tokens: int = 0  # prompt tokens served from the cache when first admitted
    logprobs: list[float] = field(default_factory=list)
    prompt_logprobs: list[float] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    error: str | None = None
    retractions: int = 0
    reported: int = 0  # generated tokens already reported in an output

    def __post_init__(self) -> None:
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
    def match_limit(self) -> int:
        """How many leading tokens may come from the cache: never the last (its logits are
        needed), nor any position whose prompt logprob is asked for."""
        limit = self.length - 1
        if self.prompt_logprobs_from is not None:
            limit = min(limit, self.prompt_logprobs_from - 1)
        return limit

    @property
    def done(self) -> bool:
        return self.state in (State.FINISHED, State.ABORTED, State.FAILED)

    def append(self, token: int, logprob: float, at: float) -> None:
        if self.length == self._buf.size:
            self._buf = np.concatenate([self._buf, np.empty(self._buf.size, dtype=ID_DTYPE)])
        self._buf[self.length] = token
        self.length += 1
        self.logprobs.append(logprob)
        self.token_times.append(at)


@dataclass
class RequestOutput:
    """What one step reports for one request: the tokens and text that are new since its last
    output, and, in its last output (``finished``), how it ended.

    Text rule: ``text`` pieces never contain a stop string nor anything that could still become
    one (such text is held back until it cannot); all pieces together are the output text, which
    is the generated tokens decoded, without a final stop token, and cut before the first stop
    string. ``text_token_count`` (last output only) says how many of the generated tokens stand
    behind that text: their decoding is a prefix of it, and what it lacks (``text`` past it) is
    at most the part of one token that preceded a stop string."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[float] | None  # of the new tokens, when asked for
    token_times: list[float]  # time.perf_counter() when each new token was sampled
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    matched_stop: str | int | None = None  # the stop string or stop token id that ended it
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the radix cache (known from the first output on)
    text_token_count: int | None = None
    prompt_logprobs: list[float] | None = None  # last output only, when asked for


@dataclass
class GenerateOutput:
    """A request's outputs put together (``add`` each ``RequestOutput`` in order)."""

    request_id: str
    arrival: float
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    matched_stop: str | int | None = None
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text_token_count: int | None = None
    prompt_logprobs: list[float] | None = None

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids += out.token_ids
        self.token_times += out.token_times
        if out.logprobs is not None:
            self.logprobs = (self.logprobs or []) + out.logprobs
        if out.finished:
            for name in ("finish_reason", "matched_stop", "error", "prompt_tokens", "cached_tokens", "text_token_count",
                         "prompt_logprobs"):
                setattr(self, name, getattr(out, name))

    @property
    def text_token_ids(self) -> list[int]:
        """The generated tokens that stand behind ``text`` (see ``RequestOutput``)."""
        return self.token_ids[: self.text_token_count]

    @property
    def time_to_first_token(self) -> float | None:
        return self.token_times[0] - self.arrival if self.token_times else None

    @property
    def decode_time(self) -> float | None:
        """Seconds from the first token to the last."""
        return self.token_times[-1] - self.token_times[0] if self.token_times else None

    @property
    def inter_token_latencies(self) -> list[float]:
        return np.diff(self.token_times).tolist()


@dataclass(frozen=True)
class ChoiceScore:
    """A choice's per-token log-probabilities after the prompt: enough for every way of ranking
    choices (sum, mean per token, token by token)."""

    token_logprobs: tuple[float, ...]

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.num_tokens
