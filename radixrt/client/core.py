"""What both clients share, with no I/O: turning calls into messages, replies into outputs, and
filing replies where their readers look."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from radixrt.outputs import STREAMED, GenerateOutput, RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire import protocol as p

Prompt = str | Sequence[int] | np.ndarray | list[dict[str, str]]
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
MAX_UNREAD = 4096
"""Replies of one request that may wait for its reader. One that falls further behind (an HTTP
client that stopped reading its stream) is aborted rather than held in memory without bound."""
STREAMED_PER_TOKEN = tuple(name for name in STREAMED if name != "text")


class ServerError(RuntimeError):
    """The server refused something; ``code`` says what kind of refusal (see docs/protocol.md)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.request_id = code, request_id


class InvalidRequest(ServerError, ValueError):
    """A request the server cannot take as given (a bad prompt or sampling parameter)."""


def error(msg: p.Error) -> ServerError:
    kind = InvalidRequest if msg.code in ("invalid_request", "bad_message", "duplicate_id") else ServerError
    return kind(msg.code, msg.message, msg.id)


def is_single(prompts: Prompt | list[Prompt]) -> bool:
    """Whether ``prompts`` is one prompt rather than a list of them."""
    if isinstance(prompts, (str, np.ndarray)) or not prompts:
        return True
    return isinstance(prompts[0], (int, np.integer, dict))


class Requests:
    """Request ids, messages for calls, and outputs for replies (token times on this process's
    ``time.perf_counter()`` clock, as the engine's)."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.clock = time.time() - time.perf_counter()  # Unix time -> perf_counter

    def message(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        namespace: Hashable,
        stream: bool,
        request_id: str | None,
        prompt_logprobs_from: int | None,
        pin: bool = False,
        score_next: Sequence[int] = (),
        tenant: str | None = None,
        retain: Sequence[p.Retain] = (),
        route_key: str | None = None,
    ) -> p.Generate:
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"a namespace on the wire is a string, got {type(namespace).__name__}")
        rid = request_id if request_id is not None else f"c{next(self._ids)}"
        kind = (
            "prompt"
            if isinstance(prompt, str)
            else "messages"
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)
            else "input_ids"
        )
        value = prompt.tolist() if isinstance(prompt, np.ndarray) else list(prompt) if kind == "input_ids" else prompt
        if kind == "messages":
            value = [p.ChatMessage(m["role"], m["content"]) for m in prompt]
        return p.Generate(
            rid,
            namespace=namespace,
            stream=stream,
            params=p.wire_sampling(params or SamplingParams()),
            prompt_logprobs_from=prompt_logprobs_from,
            pin=pin,
            score_next=[int(t) for t in score_next] or None,
            tenant=tenant,
            retain=list(retain),
            route_key=route_key,
            **{kind: value},
        )

    def output(self, msg: p.Finished, arrival: float) -> GenerateOutput:
        return p.from_wire(
            GenerateOutput, msg, arrival=arrival, finished=True, token_times=[t - self.clock for t in msg.token_times]
        )

    def refused(self, msg: p.Error, arrival: float) -> GenerateOutput:
        return GenerateOutput(
            msg.id or "", arrival=arrival, finished=True, finish_reason="error", error=f"{msg.code}: {msg.message}"
        )


class News:
    """A streamed request's replies as ``RequestOutput``s: each delta, then the finished message's
    remainder (text held back for stop strings, and how it ended). A refusal raises."""

    def __init__(self, request_id: str, requests: Requests) -> None:
        self.id, self.requests = request_id, requests
        self.tokens = self.chars = 0
        self.done = False

    def take(self, msg: p.Message) -> RequestOutput:
        if isinstance(msg, p.Error):
            self.done = True
            raise error(msg)
        if isinstance(msg, p.Delta):
            self.tokens += len(msg.token_ids)
            self.chars += len(msg.text)
            return p.from_wire(RequestOutput, msg, token_times=[time.perf_counter()] * len(msg.token_ids))
        self.done = True
        out = p.from_wire(
            RequestOutput, msg, finished=True, token_times=[t - self.requests.clock for t in msg.token_times]
        )
        for name in STREAMED_PER_TOKEN:
            if (value := getattr(out, name)) is not None:
                setattr(out, name, value[self.tokens :])
        out.text = out.text[self.chars :]
        return out


def file_reply(msg: p.Message, mail: dict[str, asyncio.Queue], control: asyncio.Queue) -> list[str]:
    """Put a reply where its reader looks: a request's mailbox, or the control queue. Replies of
    requests nobody waits for any more (aborted ones) are dropped. Returns the ids of requests whose
    mailbox was full (its reader fell ``maxsize`` replies behind): each is taken off ``mail`` with
    its reader's replies replaced by an error, and the caller aborts it on the server."""
    behind: list[str] = []

    def put(rid: str, item: Any) -> None:
        box = mail.get(rid)
        if box is None:
            return
        if box.full():
            del mail[rid]
            behind.append(rid)
            item = p.Error(
                "fell_behind",
                f"the reader fell behind: {box.maxsize} replies of this request were unread, so it was aborted",
                rid,
            )
        _put(box, item)

    if isinstance(msg, p.Deltas):
        for item in msg.items:
            put(item.id, item)
    elif isinstance(msg, (p.Finished, p.Error)) and msg.id is not None:
        put(msg.id, msg)
    elif not isinstance(msg, p.Finished):
        _put(control, msg)
    return behind


def connection_lost(mail: dict[str, asyncio.Queue], address: str) -> None:
    """The server's end of the connection closed (it stopped or was killed): it has forgotten
    every request in flight, so each of them fails now instead of waiting forever."""
    for rid, box in mail.items():
        _put(box, p.Error("connection_lost", f"the connection to {address} closed while the request ran", rid))


def _put(box: asyncio.Queue, item: Any) -> None:
    """Queue ``item``; an error that ends a request whose box is full takes the place of what its
    reader has not read (the request is over for it either way)."""
    if box.full():
        while not box.empty():
            box.get_nowait()
    box.put_nowait(item)
