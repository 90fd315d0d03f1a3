"""``StreamExecutor``: one state's text, token ids, variables and chat messages, and the thread that
builds them. The thread takes what the program appends, in order, so that ``s += gen(...)`` returns
at once and forks run side by side (their requests meet in the engine's batches).

The state keeps the token ids the model saw and produced, not only the text: a ``gen`` sends the
ids so far plus the text appended since (tokenized together), so every request's prompt begins
with exactly the tokens the previous one computed, and the radix cache serves all of it. A fork
first computes its trunk and pins it in the cache until the branches join or end.

An error while executing (a refused request, a failed one) is kept in the state (``error_``), as
SGLang does: the rest of the state's queue is skipped and waiting readers wake up.
"""

from __future__ import annotations

import threading
import traceback
import warnings
from typing import Any

from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.lang.ir import (
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglVarScopeBegin,
    SglVarScopeEnd,
    SglVideo,
)
from radixrt.lang.meta import GenMeta, LogprobFormat
from radixrt.lang.program import Program
from radixrt.outputs import RequestFailed

_END = object()


class StreamExecutor:
    """A state's executor. Readers wait on ``events`` (a variable is final) and ``changed`` (text
    or a variable grew); ``chunks`` keeps a streamed gen's pieces (text, meta info) for ``text_iter``."""

    def __init__(
        self,
        program: Program,
        arguments: dict[str, Any],
        defaults: SglSamplingParams,
        stream: bool,
        use_thread: bool = True,
    ) -> None:
        self.program, self.backend = program, program.backend
        self.arguments, self.defaults, self.stream = arguments, defaults, stream
        self.variables: dict[str | None, Any] = {}
        self.meta_info: dict[str | None, Any] = {}
        self.chunks: dict[str | None, list[tuple[str, dict[str, Any]]]] = {}
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
                warnings.warn(
                    f"Error in a radixrt.lang program: {type(e).__name__}: {e}\n"
                    f"{''.join(traceback.format_exception(e))}",
                    stacklevel=1,
                )
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
            self._set(expr.name, self.text_[self.variables[expr.name] :], final=True)
        elif isinstance(expr, (SglImage, SglVideo)):
            kind = "image" if isinstance(expr, SglImage) else "video"
            raise ValueError(f"{kind}(): the served model reads text only, and radixrt serves text-only models")
        elif isinstance(expr, SglConcateAndAppend):
            self._concat_and_append(expr.branches)
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
        start = params.logprob_start_len if params.return_logprob else None
        logprobs_from = max(1, start) if start is not None and start < len(prompt) else None
        handle = self.program.submit(prompt, engine_params, prompt_logprobs_from=logprobs_from)
        meta = GenMeta(
            LogprobFormat(
                engine_params.logprobs,
                engine_params.top_logprobs,
                self.backend.tokenizer if params.return_text_in_logprobs else None,
            ),
            prompt[logprobs_from:] if logprobs_from is not None else (),
        )
        name, text = expr.name, ""
        self.variables[name] = ""
        self.chunks[name] = []
        try:
            for out in handle:
                meta.add(out)
                text += out.text
                self.text_ += out.text
                self.variables[name] = text
                if self.stream and (out.text or out.finished):  # tokens that made no text yet go with the next chunk
                    self.chunks[name].append((out.text, meta.chunk()))
                self._notify()
        finally:
            self.program.finished(handle)
        whole = meta.whole
        if whole.error is not None:
            raise RequestFailed(whole.error)
        ids = whole.text_token_ids
        self.ids = prompt + ids
        if isinstance(whole.matched_stop, str):  # the text may end with a token's part before the stop string
            decoded = IncrementalDetokenizer(self.backend.tokenizer).update(ids, final=True)
            self.tail = text[len(decoded) :] if text.startswith(decoded) else ""
        self.meta_info[name] = meta.final()
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
        entries = LogprobFormat().entries
        decision = expr.choices_method(
            choices=expr.choices,
            normalized_prompt_logprobs=[sum(lp) / len(lp) for lp in given],
            input_token_logprobs=[entries(lp, ids) for lp, ids in zip(given, options)],
            output_token_logprobs=[[] for _ in options],
            unconditional_token_logprobs=None if alone is None else list(map(entries, alone, options)),
        )
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
        content = self.text_[self.cur_role_begin_pos :].lstrip()
        self.cur_role = None
        self._fill(self.backend.chat_template.suffix[role])
        self.messages_.append({"role": role, "content": content})

    def _concat_and_append(self, branches: list[StreamExecutor]) -> None:
        """Append each branch's own text, and its token ids, after this state's."""
        self.tokens()
        for child in branches:
            child.sync()
            self.text_ += child.text_[child.fork_start_text_pos :]
            self.ids += child.tokens()[child.fork_start_ids :]
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


def _flat(expr: Any) -> list[Any]:
    return [e for x in expr.expr_list for e in _flat(x)] if isinstance(expr, SglExprList) else [expr]
