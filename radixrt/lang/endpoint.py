"""``RuntimeEndpoint``: programs run against ``radixrt serve`` through the ZeroMQ client. One
``AsyncClient`` on an event loop of its own carries the requests of every thread of every program;
the tokenizer comes from the server, so the state's token ids are the server's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixrt.client import DEFAULT_ADDRESS, AsyncClient, load_tokenizer
from radixrt.lang.backend import Backend, Handle
from radixrt.params import SamplingParams


class RuntimeEndpoint(Backend):
    """``RuntimeEndpoint("tcp://HOST:PORT")``: the address ``radixrt serve`` printed. ``keys``: the
    key directory of a server that requires keys (see ``radixrt keys``). Pins a program holds are
    released by the server if this process goes away."""

    def __init__(
        self,
        base_url: str = DEFAULT_ADDRESS,
        *,
        keys: str | Path | None = None,
        timeout: float = 30.0,
        tokenizer: Any = None,
    ) -> None:
        if base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"{base_url}: RuntimeEndpoint speaks radixrt's ZeroMQ protocol; give the tcp:// address "
                "that `radixrt serve` prints"
            )
        self.address = base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="radixrt-endpoint")
        self._thread.start()
        try:
            self._client = self._await(_client(base_url, keys, timeout))
            self.health = self._await(self._client.health())
            if tokenizer is None:
                tokenizer = load_tokenizer(self._await(self._client.tokenizer_files()))
            self.tokenizer = tokenizer
        except BaseException:
            self.shutdown()
            raise

    def submit(
        self,
        input_ids: list[int],
        params: SamplingParams,
        *,
        prompt_logprobs_from: int | None = None,
        pin: bool = False,
        score_next: Sequence[int] = (),
    ) -> Handle:
        handle = self.new_handle()

        async def pump() -> None:
            try:
                async for out in self._client.outputs(
                    input_ids, params, prompt_logprobs_from=prompt_logprobs_from, pin=pin, score_next=score_next
                ):
                    handle.request_id = out.request_id
                    handle.put(out)
            except Exception as e:
                handle.put(e)

        task = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        handle._abort = lambda: self._loop.call_soon_threadsafe(task.cancel)  # closing the stream aborts the request
        return handle

    def unpin(self, pin_id: str) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._client.unpin(pin_id), self._loop)

    def flush_cache(self) -> bool:
        """Drop every worker's cache; False if one refused (it runs requests or holds pins)."""
        return self._await(self._client.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        info, stats = self._client.info, self._await(self._client.stats())
        return {
            "address": self.address,
            "backend": "radixrt.lang.RuntimeEndpoint",
            "model_path": info.model,
            "num_workers": info.workers,
            "max_inflight": info.max_inflight,
            "hit_rate": stats["router"]["hit_rate"],
            **stats,
        }

    def get_model_name(self) -> str:
        return self._client.info.model

    def shutdown(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if hasattr(self, "_client"):
                asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def _await(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


async def _client(address: str, keys: str | Path | None, timeout: float) -> AsyncClient:
    return AsyncClient(address, keys=keys, timeout=timeout)  # made on the loop that will use it
