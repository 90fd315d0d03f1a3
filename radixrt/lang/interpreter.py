"""Running programs: each state has an executor with a thread of its own that takes what the
program appends, in order, so that ``s += gen(...)`` returns at once and forks run side by side
(their requests meet in the engine's batches).

The state keeps the token ids the model saw and produced, not only the text: a ``gen`` sends the
ids so far plus the text appended since (tokenized together), so every request's prompt begins
with exactly the tokens the previous one computed, and the radix cache serves all of it. A fork
first computes its trunk and pins it in the cache until the branches join or end.

Errors follow SGLang: an error while executing (a refused request, a failed one) is kept in the
state (``error()``), the rest of that state's queue is skipped and waiting readers wake up; an
exception raised by the program function itself propagates out of ``run``, after every request
the program has running is aborted and every pin it holds is released.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.outputs import GenerateOutput, RequestFailed
from radixrt.lang.global_config import global_config
from radixrt.lang.backend import Backend, Handle
from radixrt.lang.ir import (SglConcateAndAppend, SglConstantText, SglExpr, SglExprList, SglFunction, SglGen,
                             SglImage, SglRoleBegin, SglRoleEnd, SglSamplingParams, SglSelect, SglVarScopeBegin,
                             SglVarScopeEnd, SglVideo)

_END = object()


class Program:
    """What one run's states share: the backend, and the requests and pins to let go of if the
    program dies."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.handles: set[Handle] = set()
        self.pins: dict[str, int] = {}  # pin id -> branches still using it
        self.cancelled = False

    def submit(self, *args: Any, **kwargs: Any) -> Handle:
        with self.lock:
            if self.cancelled:
                raise RuntimeError("the program was cancelled")
            handle = self.backend.submit(*args, **kwargs)
            self.handles.add(handle)
        return handle

    def finished(self, handle: Handle) -> None:
        with self.lock:
            self.handles.discard(handle)

    def pin(self, ids: list[int], branches: int) -> str:
        pin_id = self.backend.pin(ids)
        with self.lock:
            self.pins[pin_id] = branches
            cancelled = self.cancelled
        if cancelled:
            self.unpin(pin_id)
        return pin_id

    def release(self, pin_id: str, branches: int = 1) -> None:
        """``branches`` users of the pin are done with it; the last one unpins it."""
        with self.lock:
            left = self.pins.get(pin_id)
            if left is None:
                return
            self.pins[pin_id] = left - branches
            if self.pins[pin_id] > 0:
                return
        self.unpin(pin_id)

    def unpin(self, pin_id: str) -> None:
        with self.lock:
            self.pins.pop(pin_id, None)
        self.backend.unpin(pin_id)

    def cancel(self) -> None:
        """Abort every running request and release every pin (the program raised)."""
        with self.lock:
            self.cancelled = True
            handles, pins = list(self.handles), list(self.pins)
            self.handles.clear()
        for handle in handles:
            handle.close()
        for pin_id in pins:
            self.unpin(pin_id)


class StreamExecutor:
    """One state's text, token ids, variables and chat messages, and the thread that builds them."""

    def __init__(self, program: Program, arguments: dict[str, Any], defaults: SglSamplingParams, stream: bool,
                 use_thread: bool = True) -> None:
        self.program, self.backend = program, program.backend
        self.arguments, self.defaults, self.stream = arguments, defaults, stream
        self.variables: dict[str | None, Any] = {}
        self.meta_info: dict[str | None, Any] = {}
        self.chunks: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}  # streamed gens' pieces, for text_iter
        self.events: dict[str | None, threading.Event] = {}  # set when the variable is final
        self.text_ = ""
        self.ids: list[int] = []  # tokens fixed so far: sent to the model or produced by it
        self.tail = ""  # text appended since, tokenized when the next request is sent
        self.messages_: list[dict[str, Any]] = []
        self.cur_role: str | None = None
        self.cur_role_begin_pos: int | None = None
        self.fork_start_text_pos = self.fork_start_ids = 0
        self.trunk_pin: str | None = None
        self.error_: BaseException | None = None
        self.changed = threading.Condition()  # notified whenever text or a variable grows
        self.is_finished = False
        self._pending = 0
        self._ended = False
        self._use_thread = use_thread
        self._queue: list[Any] = []
        self._wake = threading.Condition()
        if use_thread:
            self._thread = threading.Thread(target=self._work, daemon=True, name="radixrt-program")
            self._thread.start()

    # ---- the queue -------------------------------------------------------------------------

    def submit(self, expr: SglExpr) -> None:
        for e in _flat(expr):
            if isinstance(e, (SglGen, SglVarScopeBegin)) or isinstance(e, SglSelect) and e.name is not None:
                self.events[e.name] = threading.Event()
        self._notify()
        if not self._use_thread:
            if self.error_ is None:
                self._run(expr)
            if self.error_ is not None:
                self._wake_readers()
            return
        with self._wake:
            if self._ended:
                raise RuntimeError("this state has ended (joined, or its program returned): append to a live state")
            self._queue.append(expr)
            self._pending += 1
            self._wake.notify_all()

    def sync(self) -> None:
        with self._wake:
            self._wake.wait_for(lambda: self._pending == 0)

    def end(self) -> None:
        """No more input: the thread finishes what is queued and stops."""
        with self._wake:
            if self._ended:
                return
            self._ended = True
            if self._use_thread:
                self._queue.append(_END)
                self._wake.notify_all()
            else:
                self._finish()

    def wait_finished(self) -> None:
        """Wait until an ended state's thread has let go of everything (its trunk's pin included)."""
        if self._use_thread and self._thread is not threading.current_thread():
            self._thread.join()

    def _work(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._queue)
                expr = self._queue.pop(0)
            if expr is _END:
                self._finish()
                return
            if self.error_ is None:
                self._run(expr)
            if self.error_ is not None:  # what is skipped sets its variables' events too: readers wake
                self._wake_readers()
            with self._wake:
                self._pending -= 1
                self._wake.notify_all()

    def _run(self, expr: SglExpr) -> None:
        try:
            self._execute(expr)
        except Exception as e:  # kept in the state, as SGLang does; what is queued after is skipped
            if not self.program.cancelled:
                warnings.warn(f"Error in a radixrt.lang program: {type(e).__name__}: {e}\n"
                              f"{''.join(traceback.format_exception(e))}", stacklevel=1)
            self.error_ = e
            self._wake_readers()

    def _finish(self) -> None:
        if self.trunk_pin is not None:
            self.program.release(self.trunk_pin)
            self.trunk_pin = None
        self.is_finished = True
        self._wake_readers()

    def _wake_readers(self) -> None:
        for event in list(self.events.values()):
            event.set()
        self._notify()

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # ---- reading ---------------------------------------------------------------------------

    def get_var(self, name: str | None) -> Any:
        event = self.events.get(name)
        if event is not None:
            event.wait()
        if name not in self.variables and self.error_ is not None:
            raise KeyError(f"{name!r} was never set: the program failed first ({self.error_})") from self.error_
        return self.variables[name]

    def set_var(self, name: str | None, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: str | None, timeout: float | None = None) -> Any:
        event = self.events.get(name)
        if event is not None and not event.wait(timeout):
            raise TimeoutError(f"Timeout while waiting for event '{name}'")
        return self.meta_info.get(name)

    def tokens(self) -> list[int]:
        """Fix the text appended since the last request as tokens; the state's token ids."""
        if self.tail:
            self.ids += self.backend.encode(self.tail)
            self.tail = ""
        return list(self.ids)

    # ---- executing -------------------------------------------------------------------------

    def _execute(self, expr: SglExpr | str) -> None:
        if isinstance(expr, str):
            self._fill(expr)
        elif isinstance(expr, SglConstantText):
            self._fill(expr.value)
        elif isinstance(expr, SglExprList):
            for e in expr.expr_list:
                self._execute(e)
        elif isinstance(expr, SglGen):
            self._gen(expr)
        elif isinstance(expr, SglSelect):
            self._select(expr)
        elif isinstance(expr, SglRoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, SglRoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, SglVarScopeBegin):
            self.variables[expr.name] = len(self.text_)
        elif isinstance(expr, SglVarScopeEnd):
            self._set(expr.name, self.text_[self.variables[expr.name]:], final=True)
        elif isinstance(expr, (SglImage, SglVideo)):
            kind = "image" if isinstance(expr, SglImage) else "video"
            raise ValueError(f"{kind}(): the served model reads text only, and radixrt serves text-only models")
        elif isinstance(expr, SglConcateAndAppend):
            self._concat_and_append(expr.states)
        else:
            raise ValueError(f"Unknown type: {type(expr)}")

    def _fill(self, text: str) -> None:
        text = str(text)
        self.text_ += text
        self.tail += text
        self._notify()

    def _set(self, name: str | None, value: Any, final: bool) -> None:
        self.variables[name] = value
        if final and name in self.events:
            self.events[name].set()
        self._notify()

    def _gen(self, expr: SglGen) -> None:
        params = expr.sampling_params.over(self.defaults)
        engine_params = params.engine_params()
        prompt = self.tokens()
        start = params.logprob_start_len if params.return_logprob and params.logprob_start_len is not None else None
        handle = self.program.submit(prompt, engine_params,
                                     prompt_logprobs_from=max(1, start) if start is not None and start < len(prompt) else None)
        name, text, last = expr.name, "", None
        self.variables[name] = ""
        self.chunks[name] = []
        try:
            for out in handle:
                text += out.text
                self.text_ += out.text
                self.variables[name] = text
                self.meta_info[name] = _meta(out, engine_params.logprobs, chunk=True)
                if self.stream:
                    self.chunks.setdefault(name, []).append((out.text, self.meta_info[name]))
                last = (last or GenerateOutput(out.request_id)).add(out)
                self._notify()
        finally:
            self.program.finished(handle)
        if last.error is not None:
            raise RequestFailed(last.error)
        ids = last.token_ids[: last.text_token_count]
        self.ids = prompt + ids
        if isinstance(last.matched_stop, str):  # the text may end with a token's part before the stop string
            decoded = IncrementalDetokenizer(self.backend.tokenizer).update(ids, final=True)
            self.tail = text[len(decoded):] if text.startswith(decoded) else ""
        self.meta_info[name] = _meta(last, engine_params.logprobs, chunk=False)
        self._set(name, text, final=True)

    def _select(self, expr: SglSelect) -> None:
        if expr.temperature > 1e-5:
            raise ValueError("select() picks the best choice (temperature 0); sampling among choices is not supported")
        if not expr.choices:
            raise ValueError("select() needs at least one choice")
        prompt = self.tokens()
        options = [self.backend.encode(c) for c in expr.choices]
        if not all(options):
            raise ValueError("select(): a choice is empty")
        given = self.backend.score(prompt, options)
        alone = self.backend.score([], options) if expr.choices_method.requires_unconditional_logprobs else None

        def entries(logprobs: list[float], ids: list[int]) -> list[tuple[float, int, None]]:
            return [(lp, t, None) for lp, t in zip(logprobs, ids)]

        decision = expr.choices_method(
            choices=expr.choices, normalized_prompt_logprobs=[sum(lp) / len(lp) for lp in given],
            input_token_logprobs=[entries(lp, ids) for lp, ids in zip(given, options)],
            output_token_logprobs=[[] for _ in options],
            unconditional_token_logprobs=None if alone is None else [entries(lp, ids) for lp, ids in zip(alone, options)])
        chosen = expr.choices.index(decision.decision)
        self.text_ += decision.decision
        self.ids = prompt + options[chosen]
        if expr.name is not None:
            self.meta_info[expr.name] = decision.meta_info
            self._set(expr.name, decision.decision, final=True)
        self._notify()

    def _role_begin(self, role: str) -> None:
        if self.cur_role is not None:
            raise ValueError(f"Nested roles are not allowed: {role} begins inside {self.cur_role}")
        template = self.backend.chat_template
        if role not in template.prefix:
            raise ValueError(f"unknown role {role!r}: roles are system, user and assistant")
        if not self.messages_ and role != "system" and template.default_system_prompt:
            self._role_begin("system")
            self._fill(template.default_system_prompt)
            self._role_end("system")
        self.cur_role = role
        self._fill(template.prefix[role])
        self.cur_role_begin_pos = len(self.text_)

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"{role}_end() without {role}_begin()")
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        self.cur_role = None
        self._fill(self.backend.chat_template.suffix[role])
        self.messages_.append({"role": role, "content": content})

    def _concat_and_append(self, states: list[ProgramState]) -> None:
        """Append each branch's own text, and its token ids, after this state's."""
        self.tokens()
        for state in states:
            child = state.stream_executor
            child.sync()
            self.text_ += child.text_[child.fork_start_text_pos:]
            self.ids += child.tokens()[child.fork_start_ids:]
        self._notify()

    # ---- fork ------------------------------------------------------------------------------

    def fork(self, size: int) -> list[StreamExecutor]:
        self.sync()
        size = int(size)
        ids = self.tokens()
        pin = None
        if size > 1 and ids and self.error_ is None:
            try:
                pin = self.program.pin(ids, size)
            except Exception:  # the branches' own requests will meet the same problem, and keep it
                pin = None
        children = []
        for _ in range(size):
            child = StreamExecutor(self.program, self.arguments, self.defaults, self.stream)
            child.variables, child.meta_info = dict(self.variables), dict(self.meta_info)
            child.text_, child.ids, child.messages_ = self.text_, list(ids), list(self.messages_)
            child.cur_role, child.cur_role_begin_pos = self.cur_role, self.cur_role_begin_pos
            child.fork_start_text_pos, child.fork_start_ids = len(self.text_), len(ids)
            child.trunk_pin = pin
            child.error_ = self.error_
            children.append(child)
        return children


def _flat(expr: Any) -> list[Any]:
    return [e for x in expr.expr_list for e in _flat(x)] if isinstance(expr, SglExprList) else [expr]


def _merged_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(metas[-1])
    if "output_token_logprobs" in merged:
        merged["output_token_logprobs"] = [e for m in metas for e in m.get("output_token_logprobs", [])]
    merged["completion_tokens"] = sum(m["completion_tokens"] for m in metas)
    return merged


def _meta(out: Any, logprobs: bool, chunk: bool) -> dict[str, Any]:
    """SGLang's meta info for a gen: for a streamed chunk, its own new tokens only."""
    meta: dict[str, Any] = {"id": out.request_id, "prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens,
                            "completion_tokens": len(out.token_ids)}
    if out.finished:
        meta["finish_reason"] = {"type": out.finish_reason, "matched": out.matched_stop}
    if logprobs and out.logprobs is not None:
        meta["output_token_logprobs"] = [(lp, t, None) for lp, t in zip(out.logprobs, out.token_ids)]
    if out.prompt_logprobs is not None and not chunk:
        meta["input_token_logprobs"] = list(out.prompt_logprobs)
    return meta


# ---- the user's state ------------------------------------------------------------------------

class ProgramState:
    """``s`` in a program: append with ``+=``, read with ``s[name]``, ``s.text()``, ``s.messages()``."""

    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    def _role(self, role: str, expr: SglExpr | str | None):
        if expr is not None:
            full = SglExprList([SglRoleBegin(role), expr if isinstance(expr, SglExpr) else SglConstantText(expr),
                                SglRoleEnd(role)])
            self.stream_executor.submit(full)
            return full

        @contextlib.contextmanager
        def scope():
            self.stream_executor.submit(SglRoleBegin(role))
            yield
            self.stream_executor.submit(SglRoleEnd(role))

        return scope()

    def system(self, expr: SglExpr | str | None = None):
        return self._role("system", expr)

    def user(self, expr: SglExpr | str | None = None):
        return self._role("user", expr)

    def assistant(self, expr: SglExpr | str | None = None):
        return self._role("assistant", expr)

    @contextlib.contextmanager
    def var_scope(self, name: str):
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        """``size`` copies of this state to extend separately; the trunk is computed first and
        stays pinned in the cache until they join or end."""
        return ProgramStateGroup([ProgramState(e) for e in self.stream_executor.fork(size)], self)

    @contextlib.contextmanager
    def copy(self, position_ids_offset: Any = None):
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    def text(self) -> str:
        self.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.stream_executor.messages_

    def token_ids(self) -> list[int]:
        """The token ids of the text so far (a radixrt addition): what the model read and wrote."""
        self.sync()
        return self.stream_executor.tokens()

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        self.sync()
        return self.stream_executor.error_

    def get_var(self, name: str | None) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: str | None, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str | None) -> Any:
        return self.stream_executor.get_meta_info(name)

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """The text (or variable ``var_name``) piece by piece as it grows; with ``stream=False``,
        once, whole."""
        for piece, _ in self._pieces(var_name):
            if piece:
                yield piece

    async def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False):
        loop = asyncio.get_running_loop()
        pieces = self._pieces(var_name)
        while True:
            item = await loop.run_in_executor(None, next, pieces, None)
            if item is None:
                return
            yield item if return_meta_data and var_name is not None else item[0]

    def _pieces(self, var_name: str | None) -> Iterator[tuple[str, Any]]:
        """(new text, meta info of its tokens) as the text or a variable grows."""
        ex = self.stream_executor
        if not ex.stream:
            yield (self.text() if var_name is None else self.get_var(var_name)), self.get_meta_info(var_name)
            return

        def var_done() -> bool:
            return ex.is_finished or (var_name in ex.events and ex.events[var_name].is_set())

        sent, taken, pending = 0, 0, []
        while True:
            with ex.changed:
                if var_name is None:
                    ex.changed.wait_for(lambda: len(ex.text_) > sent or ex.is_finished, timeout=1.0)
                    text, done = ex.text_, ex.is_finished
                else:
                    ex.changed.wait_for(lambda: len(ex.chunks.get(var_name, ())) > taken or var_done(), timeout=1.0)
                    new, done = ex.chunks.get(var_name, [])[taken:], var_done()
            if var_name is None:
                if len(text) > sent:
                    yield text[sent:], None
                    sent = len(text)
            else:
                taken += len(new)
                pending += new
                piece = "".join(t for t, _ in pending)
                if piece or (done and pending):  # a chunk without text gives its tokens' meta to the next
                    yield piece, _merged_meta([m for _, m in pending])
                    pending = []
            if done:
                return

    def __iadd__(self, other: SglExpr | str) -> ProgramState:
        if other is None:
            raise ValueError("Tried to append None to state.")
        self.stream_executor.submit(other)
        return self

    def __getitem__(self, name: str | None) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str | None, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str | None) -> bool:
        """Set, or to be set by a queued gen, select or var_scope (without waiting for it)."""
        return name in self.stream_executor.variables or name in self.stream_executor.events

    def __del__(self) -> None:
        self.stream_executor.end()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()})"


class ProgramStateGroup:
    """The states of one ``fork``: ``forks += expr`` (or a function of the index, or a list) appends
    to each; ``join`` ends them."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState | None = None) -> None:
        self.states, self.src_state = states, src_state

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: ProgramState) -> None:
        if self.states[i] is not value:
            raise ValueError("a fork's states cannot be replaced (forks[i] += ... appends)")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> ProgramStateGroup:
        if callable(other):
            for i, state in enumerate(self.states):
                state += other(i)
        elif isinstance(other, SglExpr):
            for state in self.states:
                state += other
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} values for {len(self.states)} forks")
            for state, value in zip(self.states, other):
                state += value
        else:
            raise ValueError(f"Invalid value: {other!r} (append a gen/select expression, a list with one value "
                             "per fork, or a function of the fork's index)")
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """``"gather_variable"``: each variable the branches set becomes a list of their values, in
        branch order, in the parent. ``"concate_and_append"``: the branches' texts are appended to the
        parent's, in order. Either way the branches end and the trunk's pin is released."""
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"Invalid join mode: {mode}")
        src = self.src_state.stream_executor
        if mode == "gather_variable":
            gathered: dict[str | None, list[Any]] = {}
            for state in self.states:
                child = state.stream_executor
                child.sync()
                for name, value in child.variables.items():
                    if name not in src.variables or src.variables[name] is not value:
                        gathered.setdefault(name, []).append(value)
            src.variables.update(gathered)
        else:
            self.src_state += SglConcateAndAppend(self.states)
            src.sync()
        for state in self.states:
            state.stream_executor.end()
        for state in self.states:
            state.stream_executor.wait_finished()


# ---- running ---------------------------------------------------------------------------------

def _backend(backend: Backend | None) -> Backend:
    backend = backend or global_config.default_backend
    if backend is None:
        raise ValueError("no backend: pass backend=, or call radixrt.lang.set_default_backend(Runtime()) first")
    return backend


def run_program(program: SglFunction, backend: Backend | None, args: tuple, kwargs: dict[str, Any],
                defaults: SglSamplingParams, stream: bool = False, sync: bool = False, use_thread: bool = True) -> ProgramState:
    kwargs = {**kwargs, **program.bind_arguments}
    shared = Program(_backend(backend))
    state = ProgramState(StreamExecutor(shared, kwargs, defaults, stream, use_thread))
    if stream:
        threading.Thread(target=_run_function, args=(state, program, args, kwargs, sync), daemon=True).start()
        return state
    return _run_function(state, program, args, kwargs, sync)


def _run_function(state: ProgramState, program: SglFunction, args: tuple, kwargs: dict[str, Any], sync: bool) -> ProgramState:
    try:
        state.ret_value = program.func(state, *args, **kwargs)
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


def run_program_batch(program: SglFunction, backend: Backend | None, batch: list[dict[str, Any]],
                      defaults: SglSamplingParams, num_threads: int | str = "auto", progress_bar: bool = False,
                      generator_style: bool = False):
    backend = _backend(backend)
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch)))

    def one(arguments: dict[str, Any]) -> ProgramState:
        return run_program(program, backend, (), arguments, defaults, sync=True)

    results = _map(one, batch, num_threads, progress_bar)
    return results if generator_style else list(results)


def _map(fn: Callable[[dict[str, Any]], ProgramState], batch: list[dict[str, Any]], threads: int,
         progress_bar: bool) -> Iterator[ProgramState]:
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
