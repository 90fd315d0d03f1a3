"""A recorder that writes a trace of a ``radixrt.lang`` program's requests as it runs: wrap the
backend, run the program, save.

    recorder = TraceRecorder(sgl.Runtime())
    program.run(..., backend=recorder)
    recorder.save("program.jsonl")

Each state of a program (the main one, each branch of a fork) sends its requests one after
another from a thread of its own: that thread's requests make one session, each the child of the
one before (a fork computes its trunk from the program function's own thread: a session of its
own). Prompts are recorded as token ids, outputs as their length in tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixrt.lang.backend import Backend, Handle
from radixrt.outputs import RequestOutput
from radixrt.params import SamplingParams
from radixrt.replay.trace import TraceRequest, write_trace


class TraceRecorder(Backend):
    def __init__(self, backend: Backend) -> None:
        self.backend, self.tokenizer = backend, backend.tokenizer
        self.requests: list[TraceRequest] = []
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._sessions: dict[int, tuple[str, str | None]] = {}  # thread -> (session, its last request's id)

    def submit(self, input_ids: list[int], params: SamplingParams, **options: Any) -> Handle:
        with self._lock:
            session, parent = self._sessions.get(threading.get_ident(), (f"t{len(self._sessions)}", None))
            request = TraceRequest(
                session,
                f"r{len(self.requests)}",
                round(time.perf_counter() - self._started, 6),
                input_ids=list(input_ids),
                output_tokens=0,
                parent=parent,
            )
            self.requests.append(request)
            self._sessions[threading.get_ident()] = (session, request.id)
        return _Recorded(self.backend.submit(input_ids, params, **options), request)

    def save(self, path: str | Path) -> int:
        """Write the trace so far; how many requests it holds."""
        with self._lock:
            return write_trace(path, list(self.requests))

    @property
    def token_usage(self):
        """The wrapped backend's: the requests run there."""
        return self.backend.token_usage

    def unpin(self, pin_id: str) -> None:
        self.backend.unpin(pin_id)

    def flush_cache(self) -> bool:
        return self.backend.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return self.backend.get_server_info()

    def shutdown(self) -> None:
        self.backend.shutdown()

    @property
    def chat_template(self):
        return self.backend.chat_template


class _Recorded(Handle):
    """The backend's handle, counting the tokens its request generates into the trace."""

    def __init__(self, inner: Handle, request: TraceRequest) -> None:
        super().__init__()
        self.inner, self.request = inner, request

    def __iter__(self) -> Iterator[RequestOutput]:
        for out in self.inner:
            self.request_id = out.request_id
            self.request.output_tokens += len(out.token_ids)
            yield out
        self.done = True

    def close(self) -> None:
        self.done = True
        self.inner.close()
