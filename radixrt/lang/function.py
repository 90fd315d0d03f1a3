"""``SglFunction``: a program (``@function def f(s, ...)``), with ``run``, ``run_batch`` and ``bind``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from radixrt.lang.ir import run_options
from radixrt.lang.run import run_program, run_program_batch


class SglFunction:
    """A program: ``@function def f(s, ...)``; its first parameter is the state ``s``."""

    def __init__(
        self, func: Callable, num_api_spec_tokens: int | None = None, bind_arguments: dict[str, Any] | None = None
    ) -> None:
        self.func, self.num_api_spec_tokens = func, num_api_spec_tokens
        spec = inspect.getfullargspec(func)
        if not spec.args or spec.args[0] != "s":
            raise TypeError(f'{func.__name__}: the first argument of a program must be "s" (the state)')
        self.arg_names, self.arg_defaults = spec.args[1:], spec.defaults or ()
        self.bind_arguments = bind_arguments or {}

    def bind(self, **kwargs: Any) -> SglFunction:
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.func.__name__} has no argument(s) {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(
        self,
        *args: Any,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        n: int = 1,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        stop_regex: Any = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        ignore_eos: bool = False,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
        stream: bool = False,
        backend: Any = None,
        use_thread: bool = True,
        **kwargs: Any,
    ):
        """Run the program; returns its ``ProgramState`` as soon as the function has returned (the
        generations it queued go on; reading a variable or the text waits for them). With
        ``stream=True`` the function itself runs on a thread, for ``text_iter``."""
        defaults = run_options(locals())
        return run_program(
            self.func, backend, args, {**kwargs, **self.bind_arguments}, defaults, stream=stream, use_thread=use_thread
        )

    def run_batch(
        self,
        batch_kwargs: list[dict[str, Any]] | list[tuple],
        *,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        n: int = 1,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        stop_regex: Any = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        min_p: float = 0.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        ignore_eos: bool = False,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        generator_style: bool = False,
    ):
        """Run the program once per element of ``batch_kwargs`` (dicts of arguments, or tuples in
        argument order) on ``num_threads`` threads ("auto": as many as SGLang uses), so that their
        generations batch together; returns the finished states in input order (or yields them,
        with ``generator_style``)."""
        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError(f"run_batch takes a list of argument dicts, got {type(batch_kwargs).__name__}")
        batch = [{**(a if isinstance(a, dict) else self._positional(a)), **self.bind_arguments} for a in batch_kwargs]
        defaults = run_options(locals())
        return run_program_batch(self.func, backend, batch, defaults, num_threads, progress_bar, generator_style)

    def __call__(self, *args: Any, **kwargs: Any):
        return self.run(*args, **kwargs)

    def _positional(self, values: Any) -> dict[str, Any]:
        if not isinstance(values, (list, tuple)) or not (
            len(self.arg_names) - len(self.arg_defaults) <= len(values) <= len(self.arg_names)
        ):
            raise TypeError(f"{values!r} does not fit the arguments of {self.func.__name__}{tuple(self.arg_names)}")
        return dict(zip(self.arg_names, values))
