"""The asyncio client of a running ``radixrt serve``: ``await generate(...)``, ``async for piece in
stream(...)``. One socket carries any number of concurrent requests; outputs are the engine's
``GenerateOutput`` and parameters its ``SamplingParams``, so code moves between an in-process
``Engine`` and a server unchanged. ``radixrt.client.Client`` is the same client, blocking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from radixrt.client.core import (
    DEFAULT_ADDRESS,
    MAX_UNREAD,
    News,
    Prompt,
    Requests,
    ServerError,
    connection_lost,
    error,
    file_reply,
    is_single,
)
from radixrt.outputs import GenerateOutput, RequestFailed, RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Keys, client_socket


class AsyncClient:
    """The asyncio client: ``await generate(...)``, ``async for piece in stream(...)``; any number
    of coroutines may share one.

    ``keys`` is a key directory (its client pair is used) or a ``Keys`` naming the pair. A request
    whose reader falls more than ``max_unread`` replies behind is aborted, and its reader gets a
    ``ServerError`` (``fell_behind``): memory stays bounded whoever reads slowly."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        keys: str | Path | Keys | None = None,
        timeout: float = 30.0,
        max_unread: int = MAX_UNREAD,
    ) -> None:
        if max_unread < 1:
            raise ValueError(f"max_unread must be at least 1, got {max_unread}")
        self.address, self.timeout, self.max_unread = address, timeout, max_unread
        self._context = zmq.asyncio.Context()
        keys = Keys.load(keys) if isinstance(keys, (str, Path)) else keys
        self._socket = client_socket(self._context, address, keys)
        self._decode = p.decoder(p.ReplyMessage).decode
        self._requests = Requests()
        self._mail: dict[str, asyncio.Queue] = {}
        self._control: asyncio.Queue | None = None
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._submitted: dict[str, float] = {}  # ids of ``submit``ted requests -> when they were sent
        self._done: asyncio.Queue | None = None  # their replies, all in one mailbox
        self._tasks: list[asyncio.Task] = []  # the reader and the disconnect watcher
        self._lock: asyncio.Lock | None = None
        self.info: p.Welcome | None = None

    async def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        tenant: str | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        single = is_single(prompts)
        batch = [prompts] if single else list(prompts)
        await self.connect()
        started = [self._send(prompt, params, namespace, stream=False, tenant=tenant) for prompt in batch]
        try:
            outputs = [await self._finished(rid, arrival) for rid, arrival in started]
        finally:
            for rid, _ in started:
                if self._mail.pop(rid, None) is not None and not self._socket.closed:
                    self._socket.send(p.encode(p.Abort(rid)))  # still running: refused elsewhere, or cancelled
        return outputs[0] if single else outputs

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        async for out in self.outputs(prompt, params, namespace=namespace, request_id=request_id, tenant=tenant):
            if out.text:
                yield out.text
            if out.error is not None:
                raise RequestFailed(out.error)

    async def outputs(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        prompt_logprobs_from: int | None = None,
        pin: bool = False,
        score_next: Sequence[int] = (),
        tenant: str | None = None,
        retain: Sequence[p.Retain] = (),
        route_key: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """As ``Client.outputs``."""
        await self.connect()
        rid, _ = self._send(
            prompt,
            params,
            namespace,
            stream=True,
            request_id=request_id,
            prompt_logprobs_from=prompt_logprobs_from,
            pin=pin,
            score_next=score_next,
            tenant=tenant,
            retain=retain,
            route_key=route_key,
        )
        box, news = self._mail[rid], News(rid, self._requests)
        try:
            while not news.done:
                yield news.take(await box.get())
        finally:
            self._mail.pop(rid, None)
            if not news.done and not self._socket.closed:
                self._socket.send(p.encode(p.Abort(rid)))

    async def pin(
        self,
        prompt: Prompt,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """As ``Client.pin``."""
        async for out in self.outputs(
            prompt,
            SamplingParams(max_new_tokens=0),
            namespace=namespace,
            request_id=request_id,
            pin=True,
            tenant=tenant,
        ):
            if out.error is not None:
                raise RequestFailed(out.error)
            rid = out.request_id
        return rid

    async def retain(
        self,
        prompt: Prompt,
        ttl: float,
        *,
        tokens: int | None = None,
        namespace: str | None = None,
        tenant: str | None = None,
        route_key: str | None = None,
    ) -> RequestOutput:
        """As ``Client.retain``."""
        async for out in self.outputs(
            prompt,
            SamplingParams(max_new_tokens=0),
            namespace=namespace,
            tenant=tenant,
            retain=[p.Retain(ttl, tokens)],
            route_key=route_key,
        ):
            if out.error is not None:
                raise RequestFailed(out.error)
        return out

    async def submit(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Send a request without waiting for it; ``finished`` collects it. Returns its id."""
        await self.connect()
        rid, arrival = self._send(
            prompt, params, namespace, stream=False, request_id=request_id, box=self._done, tenant=tenant
        )
        self._submitted[rid] = arrival
        return rid

    async def finished(self, timeout: float | None = None) -> list[GenerateOutput]:
        """Outputs of submitted requests that ended, waiting up to ``timeout`` seconds (None: until
        one ends) for the first. A request the server refused comes back with finish reason
        "error" and the refusal in ``error``."""
        done: list[GenerateOutput] = []
        while self._submitted:
            if not self._done.empty():
                msg = self._done.get_nowait()
            elif done:
                break
            else:
                try:
                    msg = await asyncio.wait_for(self._done.get(), timeout)
                except asyncio.TimeoutError:
                    break
            arrival = self._submitted.pop(msg.id, None)
            if arrival is not None:
                self._mail.pop(msg.id, None)
                done.append(
                    self._requests.output(msg, arrival)
                    if isinstance(msg, p.Finished)
                    else self._requests.refused(msg, arrival)
                )
        return done

    async def ready(self) -> bool:
        """True when the server answers and has a worker to run requests on: wait for this before
        sending work to a server that is starting (``health()`` tells more)."""
        try:
            return (await self.health())["ok"]
        except (TimeoutError, ServerError):
            return False

    async def unpin(self, pin_id: str) -> None:
        await self.connect()
        await self._socket.send(p.encode(p.Unpin(pin_id)))

    async def abort(self, request_id: str) -> None:
        await self.connect()
        await self._socket.send(p.encode(p.Abort(request_id)))

    async def stats(
        self, prefixes: bool = False, *, namespace: str | None = None, all_namespaces: bool = False
    ) -> dict[str, Any]:
        """As ``Client.stats``."""
        reply = await self._call(p.GetStats(prefixes, namespace, all_namespaces), p.Stats)
        return {"router": reply.router, "workers": reply.workers}

    async def health(self) -> dict[str, Any]:
        """As ``Client.health``."""
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
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the socket ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Greet the server (once): raises ``TimeoutError`` if it does not answer in ``timeout`` seconds."""
        if self.info is None:
            if not self._tasks:
                self._control, self._done, self._lock = asyncio.Queue(), asyncio.Queue(), asyncio.Lock()
                loop = asyncio.get_running_loop()
                self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]
            self.info = await self._call(p.Hello(p.PROTOCOL_VERSION), p.Welcome, connect=False)

    def _send(
        self,
        prompt: Prompt,
        params: SamplingParams | None,
        namespace: str | None,
        stream: bool,
        request_id: str | None = None,
        prompt_logprobs_from: int | None = None,
        pin: bool = False,
        score_next: Sequence[int] = (),
        box: asyncio.Queue | None = None,
        tenant: str | None = None,
        retain: Sequence[p.Retain] = (),
        route_key: str | None = None,
    ) -> tuple[str, float]:
        msg = self._requests.message(
            prompt,
            params,
            namespace,
            stream,
            request_id,
            prompt_logprobs_from,
            pin,
            score_next,
            tenant,
            retain,
            route_key,
        )
        self._mail[msg.id] = box if box is not None else asyncio.Queue(self.max_unread)
        self._socket.send(p.encode(msg))  # queued by ZeroMQ at once; nothing to await
        return msg.id, time.perf_counter()

    async def _finished(self, rid: str, arrival: float) -> GenerateOutput:
        box = self._mail[rid]
        while True:
            msg = await box.get()
            if isinstance(msg, p.Error):
                raise error(msg)
            if isinstance(msg, p.Finished):
                self._mail.pop(rid, None)
                return self._requests.output(msg, arrival)

    async def _call(self, msg: p.Message, reply_type: type, connect: bool = True) -> Any:
        if connect:
            await self.connect()
        async with self._lock:  # one control call at a time: replies to them carry no id
            await self._socket.send(p.encode(msg))
            try:
                reply = await asyncio.wait_for(self._control.get(), self.timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"no answer from a radixrt server at {self.address} in {self.timeout:.0f} s"
                ) from None
        if isinstance(reply, p.Error):
            raise error(reply)
        if not isinstance(reply, reply_type):
            raise ServerError("protocol", f"expected {reply_type.__name__}, got {type(reply).__name__}")
        return reply

    async def _read(self) -> None:
        while True:
            msg = self._decode(await self._socket.recv())
            for rid in file_reply(msg, self._mail, self._control):
                self._socket.send(p.encode(p.Abort(rid)))

    async def _watch(self) -> None:
        while True:
            await self._monitor.recv_multipart()
            connection_lost(self._mail, self.address)
