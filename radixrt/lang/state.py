"""What a program holds: ``ProgramState``, the ``s`` it appends to and reads from, and
``ProgramStateGroup``, the states of one ``fork``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from radixrt.lang.executor import StreamExecutor
from radixrt.lang.ir import (
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglRoleBegin,
    SglRoleEnd,
    SglVarScopeBegin,
    SglVarScopeEnd,
)


class ProgramState:
    """``s`` in a program: append with ``+=``, read with ``s[name]``, ``s.text()``, ``s.messages()``."""

    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    def _role(self, role: str, expr: SglExpr | str | None):
        if expr is not None:
            full = SglExprList(
                [SglRoleBegin(role), expr if isinstance(expr, SglExpr) else SglConstantText(expr), SglRoleEnd(role)]
            )
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
        """(new text, meta info of its tokens) as the text or a variable grows: a streamed gen's
        chunks as its executor made them (``radixrt.lang.meta``); the state's text without meta info."""
        ex = self.stream_executor
        if not ex.stream:
            yield (self.text() if var_name is None else self.get_var(var_name)), self.get_meta_info(var_name)
            return

        def var_done() -> bool:
            return ex.is_finished or (var_name in ex.events and ex.events[var_name].is_set())

        seen = 0  # characters of the text, or chunks of the variable, given so far
        while True:
            with ex.changed:  # whether it is done is read first: all that was done by then is read after
                if var_name is None:
                    ex.changed.wait_for(lambda: len(ex.text_) > seen or ex.is_finished, timeout=1.0)
                    done, text = ex.is_finished, ex.text_
                    new = [(text[seen:], None)] if len(text) > seen else []
                    seen = len(text)
                else:
                    ex.changed.wait_for(lambda: len(ex.chunks.get(var_name, ())) > seen or var_done(), timeout=1.0)
                    done = var_done()
                    new = ex.chunks.get(var_name, [])[seen:]
                    seen += len(new)
            yield from new
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
            raise ValueError(
                f"Invalid value: {other!r} (append a gen/select expression, a list with one value "
                "per fork, or a function of the fork's index)"
            )
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
            self.src_state += SglConcateAndAppend([state.stream_executor for state in self.states])
            src.sync()
        for state in self.states:
            state.stream_executor.end()
        for state in self.states:
            state.stream_executor.wait_finished()
