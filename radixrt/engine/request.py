"""A request's lifecycle inside the engine (what it reports is in ``outputs.py``)."""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from radixrt.cache import Node
from radixrt.cache.ids import ID_DTYPE
from radixrt.engine.output_text import OutputText, text_token_count
from radixrt.engine.window import KVWindow
from radixrt.outputs import RequestOutput
from radixrt.params import SamplingParams

if TYPE_CHECKING:
    import torch

PENDING_TOKEN = -1  # a pending token's place: out of every vocabulary, so a forward that read it would fail


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
    pending: int = 0  # the last generated tokens, sampled on the device but not yet known here

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
        """Generated tokens, those still pending included."""
        return self.length - self.prompt_len

    @property
    def num_known(self) -> int:
        """Generated tokens whose values have come back from the device."""
        return self.num_output - self.pending

    @property
    def known_output(self) -> np.ndarray:
        return self._buf[self.prompt_len : self.length - self.pending]

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

    @property
    def needs_known_tokens(self) -> bool:
        """Whether sampling its next token reads its earlier ones on the host (a constraint's
        state, penalties), so that a step cannot be queued before the last one's tokens are back."""
        p = self.params
        return (
            self.constraint is not None or p.repetition_penalty != 1 or bool(p.frequency_penalty or p.presence_penalty)
        )

    def add_pending(self) -> None:
        """A token sampled by a step still on the device: it counts (for length and the next step's
        input) before its value is known; ``resolve`` fills it in."""
        if self.length == self._buf.size:
            self._buf = np.concatenate([self._buf, np.empty(self._buf.size, dtype=ID_DTYPE)])
        self._buf[self.length] = PENDING_TOKEN
        self.length += 1
        self.pending += 1

    def drop_pending(self) -> None:
        self.length -= self.pending
        self.pending = 0

    def resolve(self, token: int, logprob: float, at: float, top: list[tuple[int, float]] | None = None) -> None:
        """The value of the oldest pending token."""
        self._buf[self.length - self.pending] = token
        self.pending -= 1
        self.logprobs.append(logprob)
        self.token_times.append(at)
        if top is not None:
            self.top_logprobs.append(top)

    def take(
        self, token: int, logprob: float, at: float, top: list | None, eos_ids: Collection[int]
    ) -> tuple[str, str | int | None] | None:
        """Its oldest pending token's value, and whether that ends it: ("stop", the stop string or
        token), ("length", None), ("error", why), or None to go on."""
        self.resolve(token, logprob, at, top)
        p = self.params
        stop_token = token in p.stop_token_ids or (token in eos_ids and not p.ignore_eos)
        out_of_room = self.num_known >= self.max_new_tokens
        if self.constraint is not None:
            if not self.constraint.accept_token(token):
                return "error", f"the constraint refused token {token}"
            stop_token = stop_token or self.constraint.is_terminated()  # it ends on a stop token the grammar allowed
        if (
            self.output_text is not None
            and self.output_text.feed(self.known_output, stop_token, out_of_room) is not None
        ):
            return "stop", self.output_text.matched
        if stop_token:
            return "stop", token
        return ("length", None) if out_of_room else None

    def settle(self) -> None:
        """Before it ends: what a step queued after its last known token computed does not count
        (that step fed the token), so it leaves what it would have left without overlap. The
        prompt's pages already given to the cache stay there."""
        if self.num_known:
            self.computed = max(min(self.computed, self.length - self.pending - 1), self.in_tree)

    def news(self) -> RequestOutput:
        """What it has to report since its last output: the tokens come back from the device since
        (its last output, with the totals, once it is done)."""
        new, self.reported = slice(self.reported, self.num_known), self.num_known
        out = RequestOutput(
            self.id,
            self.output[new].tolist(),
            self.output_text.take(final=self.done) if self.output_text else "",
            self.logprobs[new] if self.params.logprobs else None,
            self.token_times[new],
            prompt_tokens=self.prompt_len,
            cached_tokens=self.cached_tokens,
            top_logprobs=self.top_logprobs[new] if self.params.top_logprobs else None,
        )
        if self.done:
            stop_token = self.finish_reason == "stop" and isinstance(self.matched_stop, int)
            out.finished, out.finish_reason, out.matched_stop, out.error = (
                True,
                self.finish_reason,
                self.matched_stop,
                self.error,
            )
            out.text_token_count = text_token_count(self.output_text, self.output, stop_token)
            if self.prompt_logprobs_from is not None:
                out.prompt_logprobs = self.prompt_logprobs
            out.next_logprobs = self.next_logprobs
        return out
