"""Importers: other recordings as radixrt traces (``trace.TraceRequest``).

- Mooncake block-hash traces: each request is a session of its own; hashes of 512-token blocks.
- LMCache agent traces: one LLM call a line with its whole prompt text, grouped into sessions.
- OpenAI-style chat logs: a list of conversations; each assistant turn becomes a request whose
  prompt is the conversation before it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from radixrt.replay.jsonl import jsonl_records
from radixrt.replay.mooncake import BLOCK_SIZE, load_mooncake
from radixrt.replay.trace import Message, ReadResult, TraceRequest, read_trace


def from_mooncake(path: str | Path, block_size: int = BLOCK_SIZE) -> list[TraceRequest]:
    return [
        TraceRequest(
            session=f"m{i}",
            id=f"m{i}",
            arrival=r.timestamp_ms / 1000,
            hash_ids=list(r.hash_ids),
            block_size=block_size,
            output_tokens=r.output_length,
        )
        for i, r in enumerate(load_mooncake(path))
    ]


def from_lmcache(paths: Iterable[str | Path]) -> list[TraceRequest]:
    """LMCache agent-trace files (JSONL: ``timestamp`` in µs, ``input``, ``output``,
    ``session_id``); a directory stands for its ``*.jsonl`` files. Arrival times count from the
    earliest call of all files; a session's calls run in timestamp order, each the child of the
    one before."""
    calls = []
    for path in _files(paths):
        calls += jsonl_records(
            path,
            lambda r: (int(r["timestamp"]), str(r["session_id"]), str(r["input"]), str(r.get("output", ""))),
            "an LMCache agent-trace record",
        )
    if not calls:
        return []
    start = min(c[0] for c in calls)
    requests, turns = [], {}
    for stamp, session, prompt, output in sorted(calls, key=lambda c: (c[1], c[0])):
        k = turns.get(session, 0)
        turns[session] = k + 1
        requests.append(
            TraceRequest(
                session=session,
                id=f"{session}-{k}",
                arrival=(stamp - start) / 1e6,
                prompt=prompt,
                output=output,
                parent=f"{session}-{k - 1}" if k else None,
            )
        )
    return sorted(requests, key=lambda r: r.arrival)


def from_chat_logs(path: str | Path) -> list[TraceRequest]:
    """A JSON file holding a list of conversations, each a list of ``{"role", "content"}``
    messages: every assistant message becomes a request (its prompt is the conversation up to it,
    its output the message); conversation ``c`` is session ``c``, with no recorded timing."""
    conversations = json.loads(Path(path).read_text())
    if not isinstance(conversations, list):
        raise ValueError(f"{path}: expected a list of conversations (lists of messages)")
    requests = []
    for c, conversation in enumerate(conversations):
        if not isinstance(conversation, list):
            raise ValueError(f"{path}: conversation {c} is not a list of messages")
        history, previous = [], None
        for m, message in enumerate(conversation):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ValueError(f"{path}: conversation {c}, message {m}: expected role and content")
            if message["role"] == "assistant" and history:
                rid = f"c{c}-{m}"
                requests.append(
                    TraceRequest(
                        session=f"c{c}", id=rid, messages=list(history), output=str(message["content"]), parent=previous
                    )
                )
                previous = rid
            history.append(Message(str(message["role"]), str(message["content"])))
    return requests


FORMATS = ("auto", "radixrt", "mooncake", "lmcache", "chat")


def load(path: str | Path, fmt: str = "auto", on_error: str = "stop") -> ReadResult:
    """A trace in any of ``FORMATS``; ``auto`` takes a directory for LMCache agent traces, a
    ``.json`` file for chat logs, and a JSONL file by its first record (Mooncake's have
    ``hash_ids`` and ``timestamp``, radixrt's a ``session``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such trace")
    if fmt == "auto":
        fmt = "lmcache" if path.is_dir() else "chat" if path.suffix == ".json" else _jsonl_kind(path)
    if fmt == "radixrt":
        return read_trace(path, on_error)
    importers = {"mooncake": from_mooncake, "lmcache": lambda p: from_lmcache([p]), "chat": from_chat_logs}
    if fmt not in importers:
        raise ValueError(f"trace format is one of {', '.join(FORMATS)}, not {fmt!r}")
    return ReadResult(importers[fmt](path), [])


def _jsonl_kind(path: Path) -> str:
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return "radixrt"  # read_trace names the line
                if isinstance(first, dict) and "hash_ids" in first and "timestamp" in first:
                    return "mooncake"
                if isinstance(first, dict) and "session_id" in first and "input" in first:
                    return "lmcache"
                return "radixrt"
    return "radixrt"


def _files(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return files
