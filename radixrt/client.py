"""Talk to a running ``radixrt serve`` from Python: ``Client`` (blocking) and ``AsyncClient``
(asyncio). One socket carries any number of concurrent requests; outputs are the engine's
``GenerateOutput`` and parameters its ``SamplingParams``, so code moves between an in-process
``Engine`` and a server unchanged.

A prompt is text, token ids (a list or an int array), or a chat (a list of ``{"role", "content"}``
dicts, to which the model's chat template is applied on the server).
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from radixrt.outputs import GenerateOutput, RequestFailed, RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Keys, client_socket

Prompt = str | Sequence[int] | np.ndarray | list[dict[str, str]]
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"

__all__ = ["AsyncClient", "Client", "InvalidRequest", "RequestFailed", "ServerError"]


class ServerError(RuntimeError):
    """The server refused something; ``code`` says what kind of refusal (see docs/protocol.md)."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.request_id = code, request_id


class InvalidRequest(ServerError, ValueError):
    """A request the server cannot take as given (a bad prompt or sampling parameter)."""


def _error(msg: p.Error) -> ServerError:
    kind = InvalidRequest if msg.code in ("invalid_request", "bad_message", "duplicate_id") else ServerError
    return kind(msg.code, msg.message, msg.id)


def _single(prompts: Prompt | list[Prompt]) -> bool:
    if isinstance(prompts, (str, np.ndarray)) or not prompts:
        return True
    return isinstance(prompts[0], (int, np.integer, dict))


class _Requests:
    """What both clients share: turning calls into messages and replies into outputs."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.clock = time.time() - time.perf_counter()  # Unix time -> perf_counter

    def message(self, prompt: Prompt, params: SamplingParams | None, namespace: Hashable, stream: bool,
                request_id: str | None, prompt_logprobs_from: int | None, pin: bool = False,
                score_next: Sequence[int] = ()) -> p.Generate:
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError(f"a namespace on the wire is a string, got {type(namespace).__name__}")
        rid = request_id if request_id is not None else f"c{next(self._ids)}"
        kind = ("prompt" if isinstance(prompt, str) else
                "messages" if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict) else "input_ids")
        value = prompt.tolist() if isinstance(prompt, np.ndarray) else list(prompt) if kind == "input_ids" else prompt
        if kind == "messages":
            value = [p.ChatMessage(m["role"], m["content"]) for m in prompt]
        return p.Generate(rid, namespace=namespace, stream=stream, params=p.wire_sampling(params or SamplingParams()),
                          prompt_logprobs_from=prompt_logprobs_from, pin=pin,
                          score_next=[int(t) for t in score_next] or None, **{kind: value})

    def output(self, msg: p.Finished, arrival: float) -> GenerateOutput:
        return GenerateOutput(msg.id, arrival, msg.text, list(msg.token_ids), msg.logprobs,
                              [t - self.clock for t in msg.token_times], msg.finish_reason, msg.matched_stop, msg.error,
                              msg.prompt_tokens, msg.cached_tokens, msg.text_token_count, msg.prompt_logprobs,
                              msg.next_logprobs, msg.top_logprobs)


class Client:
    """A blocking client. ``timeout`` bounds the wait for the server's answer to a control call
    (connecting, ``stats``, ``health``); ``generate`` and ``stream`` wait as long as requests run."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, keys: str | Path | None = None, timeout: float = 30.0) -> None:
        self.address, self.timeout = address, timeout
        self._context = zmq.Context()
        self._socket = client_socket(self._context, address, Keys.load(keys) if keys else None)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._decode = p.decoder(p.ReplyMessage).decode
        self._requests = _Requests()
        self._mail: dict[str, deque] = {}  # replies of requests in flight, by id
        self._control: deque = deque()  # replies that name no request
        self._submitted: dict[str, float] = {}  # ids of ``submit``ted requests -> when they were sent
        try:
            self.info: p.Welcome = self._call(p.Hello(p.PROTOCOL_VERSION), p.Welcome)
        except BaseException:
            self.close()
            raise

    # ---- requests --------------------------------------------------------------------------

    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | None = None, *,
                 namespace: str | None = None) -> GenerateOutput | list[GenerateOutput]:
        """Run prompts to the end; a request that fails comes back with finish reason "error".
        A prompt the server refuses raises ``InvalidRequest`` and aborts the others."""
        single = _single(prompts)
        batch = [prompts] if single else list(prompts)
        started = [self._send(prompt, params, namespace, stream=False) for prompt in batch]
        outputs: dict[str, GenerateOutput] = {}
        try:
            while len(outputs) < len(started):
                self._pump(None)
                for rid, arrival in started:
                    mail = self._mail[rid]
                    while mail:
                        msg = mail.popleft()
                        if isinstance(msg, p.Error):
                            raise _error(msg)
                        if isinstance(msg, p.Finished):
                            outputs[rid] = self._requests.output(msg, arrival)
        finally:
            for rid, _ in started:
                if rid not in outputs:
                    self.abort(rid)
                self._mail.pop(rid, None)
        result = [outputs[rid] for rid, _ in started]
        return result[0] if single else result

    def stream(self, prompt: Prompt, params: SamplingParams | None = None, *, namespace: str | None = None,
               request_id: str | None = None) -> Iterator[str]:
        """The text as it is generated; raises ``RequestFailed`` if the request fails. Closing the
        iterator early aborts the request, and so does ``abort(request_id)``."""
        for out in self.outputs(prompt, params, namespace=namespace, request_id=request_id):
            if out.text:
                yield out.text
            if out.error is not None:
                raise RequestFailed(out.error)

    def outputs(self, prompt: Prompt, params: SamplingParams | None = None, *, namespace: str | None = None,
                request_id: str | None = None, prompt_logprobs_from: int | None = None,
                pin: bool = False, score_next: Sequence[int] = ()) -> Iterator[RequestOutput]:
        """The request's outputs as the engine's ``step()`` gives them: new tokens, text and
        logprobs as they come, then a last one (``finished``) that says how it ended. A refused
        request raises ``ServerError``; closing the iterator early aborts it."""
        rid, _ = self._send(prompt, params, namespace, stream=True, request_id=request_id,
                            prompt_logprobs_from=prompt_logprobs_from, pin=pin, score_next=score_next)
        news = _News(rid, self._requests)
        try:
            while not news.done:
                self._pump(None)
                mail = self._mail[rid]
                while mail and not news.done:
                    yield news.take(mail.popleft())
        finally:
            if not news.done:
                self.abort(rid)
            self._mail.pop(rid, None)

    def pin(self, prompt: Prompt, *, namespace: str | None = None, request_id: str | None = None) -> str:
        """Compute ``prompt`` and keep it cached on its worker, safe from eviction, until
        ``unpin`` or until this client disconnects; returns the pin's id."""
        for out in self.outputs(prompt, SamplingParams(max_new_tokens=0), namespace=namespace, request_id=request_id,
                                pin=True):
            if out.error is not None:
                raise RequestFailed(out.error)
            rid = out.request_id
        return rid

    def unpin(self, pin_id: str) -> None:
        self._socket.send(p.encode(p.Unpin(pin_id)))

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, namespace: str | None = None,
               request_id: str | None = None) -> str:
        """Send a request without waiting for it; ``finished`` collects it. Returns its id."""
        rid, arrival = self._send(prompt, params, namespace, stream=False, request_id=request_id)
        self._submitted[rid] = arrival
        return rid

    def finished(self, timeout: float | None = None) -> list[GenerateOutput]:
        """Outputs of submitted requests that ended, waiting up to ``timeout`` seconds (None: until
        one ends) for the first. A request the server refused comes back with finish reason
        "error" and the refusal in ``error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = []
            for rid, arrival in list(self._submitted.items()):
                for msg in self._mail[rid]:
                    if isinstance(msg, (p.Finished, p.Error)):
                        del self._submitted[rid], self._mail[rid]
                        done.append(self._requests.output(msg, arrival) if isinstance(msg, p.Finished) else
                                    GenerateOutput(rid, arrival, finish_reason="error", error=f"{msg.code}: {msg.message}"))
                        break
            left = None if deadline is None else deadline - time.monotonic()
            if done or not self._submitted or (left is not None and left <= 0):
                return done
            self._pump(left)

    def abort(self, request_id: str) -> None:
        """End a request of this client; its output (finish reason "abort") is dropped."""
        self._socket.send(p.encode(p.Abort(request_id)))

    def stats(self, prefixes: bool = False) -> dict[str, Any]:
        """``{"router": {...}, "workers": {name: engine stats}}``; with ``prefixes``, each worker's
        ``top_prefixes`` too (its most reused cached prefixes: a walk of its whole cache)."""
        reply = self._call(p.GetStats(prefixes), p.Stats)
        return {"router": reply.router, "workers": reply.workers}

    def health(self) -> dict[str, Any]:
        reply = self._call(p.GetHealth(), p.Health)
        return {"ok": reply.ok, "workers": reply.workers, "inflight": reply.inflight}

    def tokenizer_files(self) -> dict[str, bytes]:
        """The served model's tokenizer, as ``save_pretrained`` writes it (name -> contents)."""
        return self._call(p.GetTokenizer(), p.TokenizerFiles).files

    def flush_cache(self) -> bool:
        """Drop every worker's prefix cache; False if a worker refused (it runs requests or holds pins)."""
        return self._call(p.FlushCache(), p.CacheFlushed).ok

    def close(self) -> None:
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the socket ------------------------------------------------------------------------

    def _send(self, prompt: Prompt, params: SamplingParams | None, namespace: str | None, stream: bool,
              request_id: str | None = None, prompt_logprobs_from: int | None = None, pin: bool = False,
              score_next: Sequence[int] = ()) -> tuple[str, float]:
        msg = self._requests.message(prompt, params, namespace, stream, request_id, prompt_logprobs_from, pin, score_next)
        self._mail[msg.id] = deque()
        self._socket.send(p.encode(msg))
        return msg.id, time.perf_counter()

    def _call(self, msg: p.Message, reply_type: type) -> Any:
        self._socket.send(p.encode(msg))
        deadline = time.monotonic() + self.timeout
        while True:
            while self._control:
                reply = self._control.popleft()
                if isinstance(reply, p.Error):
                    raise _error(reply)
                if isinstance(reply, reply_type):
                    return reply
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from a radixrt server at {self.address} in {self.timeout:.0f} s")
            self._pump(left)

    def _pump(self, timeout: float | None) -> None:
        """Wait for messages (up to ``timeout`` seconds; None: until one comes) and file them all."""
        ready = dict(self._poller.poll(None if timeout is None else int(timeout * 1000)))
        if self._monitor in ready:
            while self._monitor.poll(0):
                self._monitor.recv_multipart()
            _connection_lost(self._mail, self.address)
        while True:
            try:
                msg = self._decode(self._socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            _file(msg, self._mail, self._control)


def _file(msg: p.Message, mail: dict[str, Any], control: Any) -> None:
    """Put a reply where its reader looks: a request's mailbox, or the control queue. Replies of
    requests nobody waits for any more (aborted ones) are dropped."""
    if isinstance(msg, p.Deltas):
        for item in msg.items:
            box = mail.get(item.id)
            if box is not None:
                _put(box, item)
    elif isinstance(msg, (p.Finished, p.Error)) and msg.id is not None:
        box = mail.get(msg.id)
        if box is not None:
            _put(box, msg)
    elif not isinstance(msg, p.Finished):
        _put(control, msg)


class _News:
    """A streamed request's replies as ``RequestOutput``s: each delta, then the finished message's
    remainder (text held back for stop strings, and how it ended). A refusal raises."""

    def __init__(self, request_id: str, requests: _Requests) -> None:
        self.id, self.requests = request_id, requests
        self.tokens = self.chars = 0
        self.done = False

    def take(self, msg: p.Message) -> RequestOutput:
        if isinstance(msg, p.Error):
            self.done = True
            raise _error(msg)
        if isinstance(msg, p.Delta):
            self.tokens += len(msg.token_ids)
            self.chars += len(msg.text)
            return RequestOutput(self.id, list(msg.token_ids), msg.text, msg.logprobs,
                                 [time.perf_counter()] * len(msg.token_ids), top_logprobs=msg.top_logprobs)
        self.done = True
        new = slice(self.tokens, None)
        return RequestOutput(self.id, list(msg.token_ids[new]), msg.text[self.chars:],
                             msg.logprobs[new] if msg.logprobs is not None else None,
                             [t - self.requests.clock for t in msg.token_times[new]], True, msg.finish_reason,
                             msg.matched_stop, msg.error, msg.prompt_tokens, msg.cached_tokens, msg.text_token_count,
                             msg.prompt_logprobs, msg.next_logprobs,
                             msg.top_logprobs[new] if msg.top_logprobs is not None else None)


def _connection_lost(mail: dict[str, Any], address: str) -> None:
    """The server's end of the connection closed (it stopped or was killed): it has forgotten
    every request in flight, so each of them fails now instead of waiting forever."""
    for rid, box in mail.items():
        _put(box, p.Error("connection_lost", f"the connection to {address} closed while the request ran", rid))


def _put(box: Any, item: Any) -> None:
    if isinstance(box, asyncio.Queue):
        box.put_nowait(item)
    else:
        box.append(item)


class AsyncClient:
    """The asyncio client: ``await generate(...)``, ``async for piece in stream(...)``; any number
    of coroutines may share one."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, keys: str | Path | None = None, timeout: float = 30.0) -> None:
        self.address, self.timeout = address, timeout
        self._context = zmq.asyncio.Context()
        self._socket = client_socket(self._context, address, Keys.load(keys) if keys else None)
        self._decode = p.decoder(p.ReplyMessage).decode
        self._requests = _Requests()
        self._mail: dict[str, asyncio.Queue] = {}
        self._control: asyncio.Queue | None = None
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._tasks: list[asyncio.Task] = []  # the reader and the disconnect watcher
        self._lock: asyncio.Lock | None = None
        self.info: p.Welcome | None = None

    async def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | None = None, *,
                       namespace: str | None = None) -> GenerateOutput | list[GenerateOutput]:
        single = _single(prompts)
        batch = [prompts] if single else list(prompts)
        await self._connect()
        started = [self._send(prompt, params, namespace, stream=False) for prompt in batch]
        try:
            outputs = [await self._finished(rid, arrival) for rid, arrival in started]
        finally:
            for rid, _ in started:
                if self._mail.pop(rid, None) is not None and not self._socket.closed:
                    self._socket.send(p.encode(p.Abort(rid)))  # still running: refused elsewhere, or cancelled
        return outputs[0] if single else outputs

    async def stream(self, prompt: Prompt, params: SamplingParams | None = None, *, namespace: str | None = None,
                     request_id: str | None = None) -> AsyncIterator[str]:
        async for out in self.outputs(prompt, params, namespace=namespace, request_id=request_id):
            if out.text:
                yield out.text
            if out.error is not None:
                raise RequestFailed(out.error)

    async def outputs(self, prompt: Prompt, params: SamplingParams | None = None, *, namespace: str | None = None,
                      request_id: str | None = None, prompt_logprobs_from: int | None = None,
                      pin: bool = False, score_next: Sequence[int] = ()) -> AsyncIterator[RequestOutput]:
        """As ``Client.outputs``."""
        await self._connect()
        rid, _ = self._send(prompt, params, namespace, stream=True, request_id=request_id,
                            prompt_logprobs_from=prompt_logprobs_from, pin=pin, score_next=score_next)
        box, news = self._mail[rid], _News(rid, self._requests)
        try:
            while not news.done:
                yield news.take(await box.get())
        finally:
            self._mail.pop(rid, None)
            if not news.done and not self._socket.closed:
                self._socket.send(p.encode(p.Abort(rid)))

    async def pin(self, prompt: Prompt, *, namespace: str | None = None, request_id: str | None = None) -> str:
        """As ``Client.pin``."""
        async for out in self.outputs(prompt, SamplingParams(max_new_tokens=0), namespace=namespace,
                                      request_id=request_id, pin=True):
            if out.error is not None:
                raise RequestFailed(out.error)
            rid = out.request_id
        return rid

    async def unpin(self, pin_id: str) -> None:
        await self._connect()
        await self._socket.send(p.encode(p.Unpin(pin_id)))

    async def abort(self, request_id: str) -> None:
        await self._connect()
        await self._socket.send(p.encode(p.Abort(request_id)))

    async def stats(self, prefixes: bool = False) -> dict[str, Any]:
        reply = await self._call(p.GetStats(prefixes), p.Stats)
        return {"router": reply.router, "workers": reply.workers}

    async def health(self) -> dict[str, Any]:
        reply = await self._call(p.GetHealth(), p.Health)
        return {"ok": reply.ok, "workers": reply.workers, "inflight": reply.inflight}

    async def tokenizer_files(self) -> dict[str, bytes]:
        return (await self._call(p.GetTokenizer(), p.TokenizerFiles)).files

    async def flush_cache(self) -> bool:
        return (await self._call(p.FlushCache(), p.CacheFlushed)).ok

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    async def __aenter__(self) -> AsyncClient:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the socket ------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self.info is None:
            if not self._tasks:
                self._control, self._lock = asyncio.Queue(), asyncio.Lock()
                loop = asyncio.get_running_loop()
                self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]
            self.info = await self._call(p.Hello(p.PROTOCOL_VERSION), p.Welcome, connect=False)

    def _send(self, prompt: Prompt, params: SamplingParams | None, namespace: str | None, stream: bool,
              request_id: str | None = None, prompt_logprobs_from: int | None = None, pin: bool = False,
              score_next: Sequence[int] = ()) -> tuple[str, float]:
        msg = self._requests.message(prompt, params, namespace, stream, request_id, prompt_logprobs_from, pin, score_next)
        self._mail[msg.id] = asyncio.Queue()
        self._socket.send(p.encode(msg))  # queued by ZeroMQ at once; nothing to await
        return msg.id, time.perf_counter()

    async def _finished(self, rid: str, arrival: float) -> GenerateOutput:
        box = self._mail[rid]
        while True:
            msg = await box.get()
            if isinstance(msg, p.Error):
                raise _error(msg)
            if isinstance(msg, p.Finished):
                self._mail.pop(rid, None)
                return self._requests.output(msg, arrival)

    async def _call(self, msg: p.Message, reply_type: type, connect: bool = True) -> Any:
        if connect:
            await self._connect()
        async with self._lock:  # one control call at a time: replies to them carry no id
            await self._socket.send(p.encode(msg))
            try:
                reply = await asyncio.wait_for(self._control.get(), self.timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no answer from a radixrt server at {self.address} in {self.timeout:.0f} s") from None
        if isinstance(reply, p.Error):
            raise _error(reply)
        if not isinstance(reply, reply_type):
            raise ServerError("protocol", f"expected {reply_type.__name__}, got {type(reply).__name__}")
        return reply

    async def _read(self) -> None:
        while True:
            msg = self._decode(await self._socket.recv())
            _file(msg, self._mail, self._control)

    async def _watch(self) -> None:
        while True:
            await self._monitor.recv_multipart()
            _connection_lost(self._mail, self.address)


def load_tokenizer(files: dict[str, bytes]) -> Any:
    """The tokenizer that ``tokenizer_files()`` gave, written once to the local cache (keyed by its
    contents) and loaded with transformers (imported here, not by the client itself)."""
    from transformers import AutoTokenizer

    from radixrt.model.loader import cache_root

    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    directory = cache_root() / "tokenizers" / digest.hexdigest()[:16]
    if not directory.exists():
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (tmp / Path(name).name).write_bytes(content)
        try:
            tmp.rename(directory)
        except OSError:  # another process wrote it first
            pass
    return AutoTokenizer.from_pretrained(directory)
