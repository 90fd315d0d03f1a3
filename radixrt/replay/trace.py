"""The trace format: JSONL, one request a line (``docs/trace-format.md``).

A request belongs to a session; a session's requests run one after another (closed loop: a turn
is sent when the session's previous turn has finished, and not before its recorded arrival).
The prompt is text, token ids, a chat, or block hashes with a block size (a trace without text,
such as Mooncake's); the output is the recorded text or only its length in tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta, Struct

from radixrt.prompts import prompt_ids
from radixrt.replay.mooncake import MAX_BLOCK_SIZE, block_tokens

PROMPT_KINDS = ("prompt", "input_ids", "messages", "hash_ids")


class Message(Struct, forbid_unknown_fields=True):
    role: str
    content: str


class TraceRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    session: str
    id: str
    arrival: Annotated[float, Meta(ge=0)] = 0.0  # seconds from the trace's start
    prompt: str | None = None
    input_ids: list[Annotated[int, Meta(ge=0)]] | None = None
    messages: list[Message] | None = None
    hash_ids: list[Annotated[int, Meta(ge=0)]] | None = None
    block_size: Annotated[int, Meta(ge=1, le=MAX_BLOCK_SIZE)] | None = None  # tokens per hash id
    output: str | None = None  # the recorded output text ...
    output_tokens: Annotated[int, Meta(ge=0)] | None = None  # ... or its length in tokens
    parent: str | None = None  # the request this one continues (an earlier turn, a fork's trunk)
    namespace: str | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the field that makes this request unusable."""
        given = [k for k in PROMPT_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(PROMPT_KINDS)} (got {', '.join(given) or 'none'})")
        if (self.hash_ids is not None) != (self.block_size is not None):
            raise ValueError("block_size goes with hash_ids, and only with them")
        if self.block_size is not None and not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size: must be in 1..{MAX_BLOCK_SIZE}, got {self.block_size}")
        if not self.session or not self.id:
            raise ValueError("session and id must be non-empty")


class TraceError(ValueError):
    """A line that is not a trace request: ``path:line: field: problem``."""


@dataclass
class ReadResult:
    requests: list[TraceRequest]
    errors: list[str]  # one message per skipped line (with ``on_error="skip"``)


_decode = msgspec.json.Decoder(TraceRequest).decode
_encode = msgspec.json.Encoder().encode


def read_trace(path: str | Path, on_error: str = "stop") -> ReadResult:
    """Read a trace. A bad line raises ``TraceError`` naming the line and field, or, with
    ``on_error="skip"``, is left out and its message kept in ``errors``. Ids must be unique and a
    ``parent`` must name an earlier request."""
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error is 'stop' or 'skip', not {on_error!r}")
    requests, errors, seen = [], [], set()
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                request = _parse(line, seen)
            except ValueError as e:
                message = f"{path}:{line_no}: {e}"
                if on_error == "stop":
                    raise TraceError(message) from None
                errors.append(message)
                continue
            seen.add(request.id)
            requests.append(request)
    return ReadResult(requests, errors)


def _parse(line: bytes, seen: set[str]) -> TraceRequest:
    try:
        request = _decode(line)
    except msgspec.ValidationError as e:  # "Expected `int`, got `str` - at `$.arrival`"
        text = str(e)
        where = text.rsplit(" - at `$.", 1)
        raise ValueError(f"{where[1].rstrip('`')}: {where[0]}" if len(where) == 2 else text) from None
    except msgspec.DecodeError as e:
        raise ValueError(f"not a JSON object: {e}") from None
    request.check()
    if request.id in seen:
        raise ValueError(f"id: {request.id!r} is used by an earlier request")
    if request.parent is not None and request.parent not in seen:
        raise ValueError(f"parent: {request.parent!r} names no earlier request")
    return request


def write_trace(path: str | Path, requests: Iterable[TraceRequest]) -> int:
    """Write ``requests`` as JSONL; how many were written."""
    n = 0
    with open(path, "wb") as f:
        for request in requests:
            request.check()
            f.write(_encode(request) + b"\n")
            n += 1
    return n


def sessions(requests: Iterable[TraceRequest]) -> dict[str, list[TraceRequest]]:
    """Each session's requests in the order they run (by arrival, then order in the trace)."""
    grouped: dict[str, list[TraceRequest]] = {}
    for request in requests:
        grouped.setdefault(request.session, []).append(request)
    return {name: sorted(turns, key=lambda r: r.arrival) for name, turns in grouped.items()}


def prompt_tokens(request: TraceRequest, tokenizer: Any = None) -> np.ndarray:
    """The request's prompt as int32 token ids: text and chats through ``tokenizer`` (a chat with
    the assistant's turn opened, as the server does), block hashes expanded block by block."""
    if request.input_ids is not None:
        return np.asarray(request.input_ids, dtype=np.int32)
    if request.hash_ids is not None:
        return block_tokens(request.hash_ids, request.block_size)
    if tokenizer is None:
        raise ValueError(f"request {request.id!r}: a text or chat prompt needs the served model's tokenizer")
    chat = [{"role": m.role, "content": m.content} for m in request.messages] if request.messages is not None else None
    return prompt_ids(request.prompt if request.prompt is not None else chat, tokenizer).astype(np.int32)


def output_length(request: TraceRequest, tokenizer: Any = None, default: int = 128) -> int:
    """Tokens to generate when replaying ``request``: the recorded length, else the recorded
    text's length in tokens, else ``default``."""
    if request.output_tokens is not None:
        return request.output_tokens
    if request.output is not None and tokenizer is not None:
        return len(tokenizer.encode(request.output, add_special_tokens=False))
    return default


def iter_prompts(requests: Iterable[TraceRequest], tokenizer: Any = None) -> Iterator[np.ndarray]:
    for request in requests:
        yield prompt_tokens(request, tokenizer)
