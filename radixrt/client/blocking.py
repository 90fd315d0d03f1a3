"""The blocking client: ``AsyncClient`` on an event loop of its own thread, so both behave alike
by construction. Safe to share between threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from radixrt.client.aio import AsyncClient
from radixrt.client.core import DEFAULT_ADDRESS, MAX_UNREAD, Prompt
from radixrt.outputs import GenerateOutput, RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire import protocol as p
from radixrt.wire.sockets import Keys


class Client:
    """A blocking client. ``timeout`` bounds the wait for the server's answer to a control call
    (connecting, ``stats``, ``health``); ``generate`` and ``stream`` wait as long as requests run.
    Every method is ``AsyncClient``'s, waited for (``keys`` and ``max_unread`` too).

    ``tenant`` names whose in-flight limit and fair share a request counts against; the server
    takes it from an admin client only (any other is a tenant of its own)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        keys: str | Path | Keys | None = None,
        timeout: float = 30.0,
        max_unread: int = MAX_UNREAD,
    ) -> None:
        self.address, self.timeout = address, timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="radixrt-client")
        self._thread.start()
        try:
            self._async: AsyncClient = self._wait(_connected(address, keys, timeout, max_unread))
            self.info = self._async.info
        except BaseException:
            self.close()
            raise

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        tenant: str | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Run prompts to the end; a request that fails comes back with finish reason "error".
        A prompt the server refuses raises ``InvalidRequest`` and aborts the others."""
        return self._wait(self._async.generate(prompts, params, namespace=namespace, tenant=tenant))

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> Iterator[str]:
        """The text as it is generated; raises ``RequestFailed`` if the request fails. Closing the
        iterator early aborts the request, and so does ``abort(request_id)``."""
        return self._iterate(
            self._async.stream(prompt, params, namespace=namespace, request_id=request_id, tenant=tenant)
        )

    def outputs(
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
    ) -> Iterator[RequestOutput]:
        """The request's outputs as the engine's ``step()`` gives them: new tokens, text and
        logprobs as they come, then a last one (``finished``) that says how it ended. A refused
        request raises ``ServerError``; closing the iterator early aborts it."""
        return self._iterate(
            self._async.outputs(
                prompt,
                params,
                namespace=namespace,
                request_id=request_id,
                prompt_logprobs_from=prompt_logprobs_from,
                pin=pin,
                score_next=score_next,
                tenant=tenant,
                retain=retain,
                route_key=route_key,
            )
        )

    def pin(
        self,
        prompt: Prompt,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Compute ``prompt`` and keep it cached on its worker, safe from eviction, until
        ``unpin`` or until this client disconnects; returns the pin's id."""
        return self._wait(self._async.pin(prompt, namespace=namespace, request_id=request_id, tenant=tenant))

    def retain(
        self,
        prompt: Prompt,
        ttl: float,
        *,
        tokens: int | None = None,
        namespace: str | None = None,
        tenant: str | None = None,
        route_key: str | None = None,
    ) -> RequestOutput:
        """Compute ``prompt`` where it is not cached, and keep its first ``tokens`` tokens (all of it
        by default) cached for ``ttl`` seconds after their last use, every hit renewing it: they may
        move to a host or disk tier meanwhile, never out of the cache. Unlike a pin it outlives this
        client. Raises ``RequestFailed`` past the namespace's retention cap (its worker's), and
        ``ServerError`` for a ttl out of range; returns the request's last output
        (``cached_tokens``: how much was cached already)."""
        return self._wait(
            self._async.retain(prompt, ttl, tokens=tokens, namespace=namespace, tenant=tenant, route_key=route_key)
        )

    def unpin(self, pin_id: str) -> None:
        self._wait(self._async.unpin(pin_id))

    def submit(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        namespace: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Send a request without waiting for it; ``finished`` collects it. Returns its id."""
        return self._wait(self._async.submit(prompt, params, namespace=namespace, request_id=request_id, tenant=tenant))

    def finished(self, timeout: float | None = None) -> list[GenerateOutput]:
        """Outputs of submitted requests that ended, waiting up to ``timeout`` seconds (None: until
        one ends) for the first; a refused one comes back with finish reason "error"."""
        return self._wait(self._async.finished(timeout))

    def abort(self, request_id: str) -> None:
        """End a request of this client; its output (finish reason "abort") is dropped."""
        self._wait(self._async.abort(request_id))

    def ready(self) -> bool:
        """True when the server answers and has a worker to run requests on."""
        return self._wait(self._async.ready())

    def health(self) -> dict[str, Any]:
        """``{"ok": a worker is connected, "workers": names, "inflight": requests}`` (the names and
        the count for an admin client only, None for others); ``ready()`` is the check."""
        return self._wait(self._async.health())

    def stats(
        self, prefixes: bool = False, *, namespace: str | None = None, all_namespaces: bool = False
    ) -> dict[str, Any]:
        """``{"router": {...}, "workers": {name: engine stats}}``; with ``prefixes``, each worker's
        ``top_prefixes`` too (its most reused cached prefixes: a walk of its whole cache) of
        ``namespace`` (a tenant's within its own), or of every namespace with ``all_namespaces``
        (an admin client's question)."""
        return self._wait(self._async.stats(prefixes, namespace=namespace, all_namespaces=all_namespaces))

    def tokenizer_files(self) -> dict[str, bytes]:
        """The served model's tokenizer, as ``save_pretrained`` writes it (name -> contents)."""
        return self._wait(self._async.tokenizer_files())

    def flush_cache(self) -> bool:
        """Drop every worker's prefix cache; False if a worker refused (it runs requests or holds pins)."""
        return self._wait(self._async.flush_cache())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if hasattr(self, "_async"):
                self._wait(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the client's loop and wait for it; interrupted (Ctrl-C), it is cancelled,
        which aborts the requests it started."""
        future: Future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _iterate(self, stream: AsyncIterator) -> Iterator:
        try:
            while True:
                try:
                    item = self._wait(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._loop.is_closed():
                self._wait(stream.aclose())  # an early close aborts the request


async def _connected(address: str, keys: str | Path | Keys | None, timeout: float, max_unread: int) -> AsyncClient:
    """An ``AsyncClient`` made on the loop that will use it, and greeted by the server."""
    client = AsyncClient(address, keys=keys, timeout=timeout, max_unread=max_unread)
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client
