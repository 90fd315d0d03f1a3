"""What a program runs on: a ``Backend`` takes token ids and sampling parameters and gives the
engine's ``RequestOutput``s back on the calling thread, however it talks to the engine (in-process
in ``Runtime``, over ZeroMQ in ``RuntimeEndpoint``). Both share everything else here: the
tokenizer and chat template, scoring of ``select``'s choices, pins, and the count of tokens used."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixrt.lang.chat_template import ChatTemplate
from radixrt.outputs import GenerateOutput, RequestFailed, RequestOutput, choice_requests, choice_scores
from radixrt.params import SamplingParams


@dataclass
class TokenUsage:
    """The tokens of every request a backend ran (``backend.token_usage``; SGLang's ``TokenUsage``):
    gens, ``select``'s scoring requests and forks' trunks alike. ``cached_tokens`` (a radixrt
    addition) are the prompt tokens among them that the radix cache served."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, out: RequestOutput) -> None:
        with self._lock:
            self.completion_tokens += len(out.token_ids)
            if out.finished:
                self.prompt_tokens += out.prompt_tokens
                self.cached_tokens += out.cached_tokens

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0


class Handle:
    """A request's outputs, put by the thread that talks to the engine and read by the program's
    thread. Iterating ends after the finished output; closing before that aborts the request.
    Each output counts into ``usage`` as it is put, whether or not anyone reads it."""

    def __init__(self, usage: TokenUsage | None = None) -> None:
        self.request_id: str | None = None
        self._outputs: queue.SimpleQueue[RequestOutput | BaseException] = queue.SimpleQueue()
        self._abort: Callable[[], None] | None = None
        self._usage = usage
        self.done = False

    def put(self, item: RequestOutput | BaseException) -> None:
        if self._usage is not None and isinstance(item, RequestOutput):
            self._usage.count(item)
        self._outputs.put(item)

    def __iter__(self) -> Iterator[RequestOutput]:
        try:
            while not self.done:
                item = self._outputs.get()
                if isinstance(item, BaseException):
                    self.done = True
                    raise item
                self.done = item.finished
                yield item
        finally:
            self.close()

    def last(self) -> GenerateOutput:
        """Wait for the end; every output put together."""
        whole = None
        for out in self:
            whole = (whole or GenerateOutput(out.request_id)).add(out)
        return whole

    def close(self) -> None:
        """Abort the request if it is still running; a reader waiting on it raises."""
        if not self.done:
            self.done = True
            if self._abort is not None:
                self._abort()
            self._outputs.put(RequestFailed("the request was aborted"))


class Backend(ABC):
    """A model to run programs on. ``tokenizer`` and ``chat_template`` are the served model's."""

    tokenizer: Any
    _chat_template: ChatTemplate | None = None

    @abstractmethod
    def submit(
        self,
        input_ids: list[int],
        params: SamplingParams,
        *,
        prompt_logprobs_from: int | None = None,
        pin: bool = False,
        score_next: Sequence[int] = (),
    ) -> Handle:
        """Start a request (options as ``Engine.add_request``'s); its outputs come through the handle."""

    @abstractmethod
    def unpin(self, pin_id: str) -> None: ...

    @abstractmethod
    def flush_cache(self) -> bool: ...

    @abstractmethod
    def get_server_info(self) -> dict[str, Any]: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    @property
    def chat_template(self) -> ChatTemplate:
        if self._chat_template is None:
            self._chat_template = ChatTemplate.from_tokenizer(self.tokenizer)
        return self._chat_template

    @property
    def token_usage(self) -> TokenUsage:
        """Made on first use, so that a subclass needs no ``__init__`` of ours (``setdefault``: one,
        even if two threads ask at once)."""
        usage = self.__dict__.get("_token_usage")
        return usage if usage is not None else self.__dict__.setdefault("_token_usage", TokenUsage())

    def new_handle(self) -> Handle:
        """A new request's handle, counting into ``token_usage``."""
        return Handle(self.token_usage)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_model_name(self) -> str:
        """The served model's path (SGLang's ``RuntimeEndpoint.get_model_name``)."""
        return self.get_server_info()["model_path"]

    def cache_prefix(self, prefix_str: str) -> None:
        """Compute ``prefix_str``'s tokens into the cache (evictable, as any cached prefix)."""
        self._prefill(self.encode(prefix_str))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def pin(self, input_ids: list[int]) -> str:
        """Compute ``input_ids`` and keep them cached until ``unpin``; the pin's id."""
        return self._prefill(input_ids, pin=True).request_id

    def _prefill(self, input_ids: list[int], pin: bool = False) -> GenerateOutput:
        out = self.submit(input_ids, SamplingParams(max_new_tokens=0), pin=pin).last()
        if out.error is not None:
            raise RequestFailed(out.error)
        return out

    def score(self, prompt: list[int], options: list[list[int]]) -> list[list[float]]:
        """Each option's token log-probabilities after ``prompt`` (as ``Engine.score_choices``: the
        prompt computed once, all options in one batch); with an empty prompt, with no context."""
        handles = []
        try:
            for ids, options_ in choice_requests(prompt, options):
                handles.append(self.submit(ids, SamplingParams(max_new_tokens=0), **options_))
            outs = [h.last() for h in handles]
        finally:
            for h in handles:
                h.close()
        for out in outs:
            if out.error is not None:
                raise RequestFailed(out.error)
        return [list(score.token_logprobs) for score in choice_scores(prompt, options, outs)]
