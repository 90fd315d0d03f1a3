"""``Runtime``: the engine in this process, its loop on a background thread, so that a program's
forks and ``run_batch``'s programs submit from their own threads and meet in the same batches."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from radixrt.engine import Engine
from radixrt.lang.backend import Backend, Handle
from radixrt.params import SamplingParams

IDLE_WAIT = 0.05


class Runtime(Backend):
    """``Runtime()`` serves the default model; ``Runtime(model_path=...)`` (or ``model=``) another.
    Other keyword arguments go to ``Engine`` (``page_size``, ``kv_cache_bytes``, ``max_running``,
    ``enable_cache``, ...). ``shutdown()`` stops the loop."""

    def __init__(self, model_path: str | None = None, *, model: str | None = None, **engine_options: Any) -> None:
        try:
            self.engine = Engine(model_path or model, **engine_options)
        except TypeError as e:
            raise TypeError(f"Runtime: {e} (Runtime takes model_path and the options of radixrt.Engine)") from None
        self.tokenizer = self.engine.tokenizer
        self._calls: queue.SimpleQueue[tuple[Callable[[Engine], Any], Future]] = queue.SimpleQueue()
        self._handles: dict[str, Handle] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="radixrt-engine")
        self._thread.start()

    # ---- Backend ---------------------------------------------------------------------------

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

        def add(engine: Engine) -> None:
            rid = engine.add_request(
                input_ids, params, prompt_logprobs_from=prompt_logprobs_from, pin=pin, score_next=score_next
            )
            handle.request_id = rid
            self._handles[rid] = handle

        self.call(add)
        handle._abort = lambda: self.call(lambda engine: engine.abort(handle.request_id), wait=False)
        return handle

    def unpin(self, pin_id: str) -> None:
        self.call(lambda engine: engine.unpin(pin_id), wait=not self._stopping)

    def flush_cache(self) -> bool:
        return self.call(lambda engine: engine.flush_cache())

    def get_server_info(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "model_path": self.get_model_name(),
            "backend": "radixrt.lang.Runtime",
            "device": engine.device,
            "page_size": engine.pool.page_size,
            **self.call(lambda e: e.stats()),
        }

    def get_model_name(self) -> str:
        return str(self.engine.model_path)

    @property
    def endpoint(self) -> Runtime:
        """What SGLang programs reach the server through (``sgl.global_config.default_backend.endpoint``):
        SGLang's ``Runtime`` starts a server and talks to it through a ``RuntimeEndpoint``; this one
        runs the engine in the process and is its own endpoint."""
        return self

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.engine.close()

    def stats(self) -> dict[str, Any]:
        """The engine's counters (``Engine.stats``)."""
        return self.call(lambda engine: engine.stats())

    # ---- the loop --------------------------------------------------------------------------

    def call(self, fn: Callable[[Engine], Any], wait: bool = True) -> Any:
        """Run ``fn(engine)`` on the engine's thread; its result (or exception) if ``wait``."""
        if self._stopping:
            if not wait:
                return None  # an abort or unpin after shutdown: nothing is left to let go of
            raise RuntimeError("this Runtime was shut down")
        future: Future = Future()
        self._calls.put((fn, future))
        self._wake.set()
        return future.result() if wait else None

    def _loop(self) -> None:
        engine = self.engine
        while not self._stopping:
            while True:
                try:
                    fn, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    future.set_result(fn(engine))
                except Exception as e:
                    future.set_exception(e)
            if not engine.has_work():
                self._wake.wait(IDLE_WAIT)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as e:  # a bug: fail what is running rather than hang its programs
                for handle in self._handles.values():
                    handle.put(e)
                self._handles.clear()
                continue
            for out in outputs:
                handle = self._handles.get(out.request_id)
                if handle is not None:
                    handle.put(out)
                    if out.finished:
                        del self._handles[out.request_id]
        for handle in self._handles.values():
            handle.put(RuntimeError("the Runtime was shut down"))
