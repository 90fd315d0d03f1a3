"""What the router does with a request before any worker sees it: its prompt to token ids, its
sampling parameters from the wire, and admission by the engine's own rules against the workers'
model (a constraint is compiled here, so a bad one is refused before it reaches a worker).

That work is the one part of a request whose cost its sender chooses (a long prompt, a hard
schema), so it runs on a thread beside the router's loop, never in it: ``start`` hands a request
over, ``done`` returns the finished ones, and ``wake`` is a descriptor for the loop's poller that
is readable while some are. A prompt whose text is too long to fit the context whatever its tokens
is refused before it is tokenized, and a constraint that takes longer than ``COMPILE_TIMEOUT`` to
compile is refused (its compilation runs on to its end on a thread of its own, holding no lock)."""

from __future__ import annotations

import os
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from radixrt.engine.admission import ModelLimits, admit
from radixrt.engine.constraints import Grammars
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.output_text import OutputText
from radixrt.params import SamplingParams
from radixrt.prompts import chat_prefix_length, prompt_ids
from radixrt.server.bookkeeping import Job
from radixrt.wire import protocol as p
from radixrt.wire.tokenizer_files import tokenizer_files

COMPILE_TIMEOUT = 5.0


class Refused(Exception):
    """A request the router does not take; ``code`` is the wire error's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_room(msg: p.Generate, peer_jobs: dict[str, Any], pinned: bool, tenant_full: bool, workers: int) -> None:
    """Refuse a request whose id is taken, a tenant at its limit, or any request with no worker."""
    if msg.id in peer_jobs:
        raise Refused("duplicate_id", f"request id {msg.id!r} is already in flight")
    if msg.pin and pinned:
        raise Refused("duplicate_id", f"request id {msg.id!r} names a pin already: unpin it first")
    if tenant_full:
        raise Refused(
            "too_many_requests", "this tenant has the most requests in flight it may have; wait for one to end"
        )
    if not workers:
        raise Refused("unavailable", "no worker is connected")


@dataclass
class Prepared:
    """A request ready for a worker: its prompt ids, checked parameters, ``score_next`` and the
    text state that watches its stop strings."""

    prompt: np.ndarray
    params: SamplingParams
    score_next: tuple[int, ...]
    text: OutputText | None
    retain: list[tuple[int, float]]  # (prefix tokens, ttl seconds)


class _TimedCompiles:
    """``Grammars`` whose ``compile`` gives up waiting after ``COMPILE_TIMEOUT`` seconds."""

    def __init__(self, grammars: Grammars, pool: ThreadPoolExecutor) -> None:
        self.grammars, self.pool = grammars, pool

    def compile(self, params: SamplingParams) -> Any:
        future = self.pool.submit(self.grammars.compile, params)
        try:
            return future.result(timeout=COMPILE_TIMEOUT)
        except FutureTimeout:
            raise ValueError(f"the constraint takes longer than {COMPILE_TIMEOUT:.0f} s to compile") from None


class Intake:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._grammars: _TimedCompiles | None = None  # made on the first constrained request
        self._files: bytes | None = None
        self._token_chars: int | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="radixrt-intake")
        self._compiles = ThreadPoolExecutor(1, thread_name_prefix="radixrt-compile")
        self._done: queue.SimpleQueue[tuple[Job, Future]] = queue.SimpleQueue()
        self.wake, self._wake_w = os.pipe()
        os.set_blocking(self.wake, False)

    def start(self, job: Job, msg: p.Generate, workers: list[p.Register]) -> None:
        """Prepare ``job`` (from ``msg``) for ``workers`` on the intake thread."""
        future = self._pool.submit(self.prepare, msg, workers)
        future.add_done_callback(lambda f: self._finished(job, f))

    def done(self) -> list[tuple[Job, Prepared | Refused]]:
        """The requests prepared since the last call, each with what came of it."""
        try:
            os.read(self.wake, 1 << 16)
        except BlockingIOError:
            pass
        finished = []
        while True:
            try:
                job, future = self._done.get_nowait()
            except queue.Empty:
                return finished
            try:
                finished.append((job, future.result()))
            except Refused as e:
                finished.append((job, e))
            except Exception as e:  # a bug: this request's alone
                finished.append((job, Refused("internal", f"the router failed on it: {type(e).__name__}: {e}")))

    def prepare(self, msg: p.Generate, workers: list[p.Register]) -> Prepared:
        """``msg`` tokenized and admitted, or ``Refused`` naming what is wrong."""
        try:
            prompt, params, score_next = self.admit(msg, workers)
            retain = self.retained(msg, prompt)
        except ValueError as e:
            raise Refused("invalid_request", str(e)) from None
        except Exception as e:  # the tokenizer choked on the text: this request's fault alone
            raise Refused("invalid_request", f"the prompt could not be tokenized: {type(e).__name__}: {e}") from None
        text = OutputText(IncrementalDetokenizer(self.tokenizer), params.stop) if self.tokenizer is not None else None
        return Prepared(prompt.astype(np.int32), params, score_next, text, retain)

    def retained(self, msg: p.Generate, prompt: np.ndarray) -> list[tuple[int, float]]:
        """The prefixes ``msg`` asks to retain, as (tokens, ttl) pairs."""
        out = []
        for r in msg.retain:
            if r.tokens is not None and r.message is not None:
                raise ValueError("a retention names tokens or a message, not both")
            if r.message is not None:
                if msg.messages is None:
                    raise ValueError("a retention by message needs a chat prompt (messages)")
                chat = [{"role": m.role, "content": m.content} for m in msg.messages]
                tokens = chat_prefix_length(self.tokenizer, chat, r.message, prompt)
            else:
                tokens = len(prompt) if r.tokens is None else r.tokens
            if tokens > len(prompt):
                raise ValueError(f"a retention of {tokens} tokens is longer than the prompt ({len(prompt)} tokens)")
            out.append((tokens, r.ttl))
        return out

    def admit(self, msg: p.Generate, workers: list[p.Register]) -> tuple[np.ndarray, SamplingParams, tuple[int, ...]]:
        """The request's prompt ids, parameters and ``score_next``; ``ValueError`` names what is wrong."""
        given = [name for name in ("prompt", "input_ids", "messages") if getattr(msg, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, input_ids and messages (got {', '.join(given) or 'none'})")
        first = workers[0]
        limits = ModelLimits(
            first.vocab_size,
            first.max_context,
            min(w.num_pages * w.page_size for w in workers),
            self.tokenizer is not None,
            first.page_size,
        )
        params = p.sampling_params(msg.params)
        params.validate(limits.vocab_size)  # before the prompt: parameters are cheap to check
        self._check_text_size(msg, limits.max_prompt(params.kv_window is not None))
        chat = [{"role": m.role, "content": m.content} for m in msg.messages] if msg.messages is not None else None
        prompt = prompt_ids(next(v for v in (msg.prompt, msg.input_ids, chat) if v is not None), self.tokenizer)
        if params.constrained and self.tokenizer is not None and self._grammars is None:
            self._grammars = _TimedCompiles(Grammars(self.tokenizer, first.vocab_size), self._compiles)
        score_next = admit(
            prompt,
            params,
            limits,
            self._grammars if params.constrained else None,
            prompt_logprobs_from=msg.prompt_logprobs_from,
            score_next=msg.score_next or (),
        )
        return prompt, params, score_next

    def _check_text_size(self, msg: p.Generate, max_tokens: int) -> None:
        """Refuse text that cannot fit ``max_tokens`` tokens even if every token were the longest
        one of the vocabulary, before spending time on tokenizing it."""
        if self.tokenizer is None or (msg.prompt is None and msg.messages is None):
            return
        size = len(msg.prompt) if msg.prompt is not None else sum(len(m.content) for m in msg.messages)
        if size <= max_tokens:
            return  # a token is at least one character: no need to know the vocabulary
        if self._token_chars is None:
            self._token_chars = longest_token_chars(self.tokenizer)
        if size > self._token_chars * max_tokens:
            raise ValueError(
                f"the prompt has {size} characters: more than {max_tokens} tokens of at most "
                f"{self._token_chars} characters each, so it cannot fit the context"
            )

    def tokenizer_reply(self) -> bytes:
        """The ``TokenizerFiles`` reply, encoded once (megabytes, asked for by every front end)."""
        if self._files is None:
            self._files = p.encode(p.TokenizerFiles(tokenizer_files(self.tokenizer)))
        return self._files

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._compiles.shutdown(wait=False, cancel_futures=True)
        os.close(self.wake)
        os.close(self._wake_w)

    def _finished(self, job: Job, future: Future) -> None:
        self._done.put((job, future))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # the pipe is full (the loop will read it) or closed
            pass


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for (a bound for any text it encodes)."""
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer.convert_tokens_to_string([t])) for t in vocab) if vocab else 1
