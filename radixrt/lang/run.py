"""Running programs: ``run_program`` (a program's ``run``) and ``run_program_batch`` (its
``run_batch``). An exception raised by the program function propagates out of them, after every
request the program has running is aborted and every pin it holds is released."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from radixrt.lang.backend import Backend
from radixrt.lang.executor import StreamExecutor
from radixrt.lang.global_config import global_config
from radixrt.lang.ir import SglSamplingParams
from radixrt.lang.program import Program
from radixrt.lang.state import ProgramState


def _backend(backend: Backend | None) -> Backend:
    backend = backend or global_config.default_backend
    if backend is None:
        raise ValueError("no backend: pass backend=, or call radixrt.lang.set_default_backend(Runtime()) first")
    return backend


def run_program(
    func: Callable[..., Any],
    backend: Backend | None,
    args: tuple,
    kwargs: dict[str, Any],
    defaults: SglSamplingParams,
    stream: bool = False,
    sync: bool = False,
    use_thread: bool = True,
) -> ProgramState:
    """Run ``func(s, *args, **kwargs)`` on a new state; with ``stream``, on a thread of its own."""
    state = ProgramState(StreamExecutor(Program(_backend(backend)), kwargs, defaults, stream, use_thread))
    if stream:
        threading.Thread(target=_run_function, args=(state, func, args, kwargs, sync), daemon=True).start()
        return state
    return _run_function(state, func, args, kwargs, sync)


def _run_function(
    state: ProgramState, func: Callable[..., Any], args: tuple, kwargs: dict[str, Any], sync: bool
) -> ProgramState:
    try:
        state.ret_value = func(state, *args, **kwargs)
    except BaseException:
        state.stream_executor.program.cancel()
        raise
    finally:
        state.stream_executor.end()
    if sync:
        state.sync()
    if global_config.verbosity >= 2:
        print(state.text())
    return state


def run_program_batch(
    func: Callable[..., Any],
    backend: Backend | None,
    batch: list[dict[str, Any]],
    defaults: SglSamplingParams,
    num_threads: int | str = "auto",
    progress_bar: bool = False,
    generator_style: bool = False,
) -> list[ProgramState] | Iterator[ProgramState]:
    """Run ``func`` once per dict of keyword arguments, each to its end, on ``num_threads`` threads."""
    backend = _backend(backend)
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch)))

    def one(arguments: dict[str, Any]) -> ProgramState:
        return run_program(func, backend, (), arguments, defaults, sync=True)

    results = _map(one, batch, num_threads, progress_bar)
    return results if generator_style else list(results)


def _map(
    fn: Callable[[dict[str, Any]], ProgramState], batch: list[dict[str, Any]], threads: int, progress_bar: bool
) -> Iterator[ProgramState]:
    bar = tqdm(total=len(batch), disable=not progress_bar, desc="programs")
    try:
        if threads == 1:
            for arguments in batch:
                yield fn(arguments)
                bar.update()
            return
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(fn, a) for a in batch]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            for f in futures:
                yield f.result()
    finally:
        bar.close()
