"""The functions a program is written with, under SGLang's names and positional orders."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from radixrt.lang.choices import ChoicesSamplingMethod, token_length_normalized
from radixrt.lang.function import SglFunction
from radixrt.lang.global_config import global_config
from radixrt.lang.ir import (
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglVideo,
    _expr,
)


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """``@function`` or ``@function(...)``: make ``func(s, ...)`` a program."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens)


def set_default_backend(backend: Any) -> None:
    global_config.default_backend = backend


def flush_cache(backend: Any = None) -> bool:
    """Drop the prefix cache (refused while requests run or pins are held); False without a backend."""
    backend = backend or global_config.default_backend
    return False if backend is None else backend.flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    backend = backend or global_config.default_backend
    return None if backend is None else backend.get_server_info()


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
    dtype: type | str | None = None,
    choices: list[str] | None = None,
    choices_method: ChoicesSamplingMethod | None = None,
    regex: str | None = None,
    json_schema: str | dict | None = None,
    stop_regex: str | list[str] | None = None,
) -> SglExpr:
    """Generate into variable ``name``. Unset options take the ``run`` call's values. With
    ``choices`` it is ``select``. ``regex``, ``json_schema`` and ``dtype`` constrain the tokens
    the engine samples. (``stop_regex``, SGLang 0.5's, is keyword-only here: SGLang 0.4's positional
    order is kept.)"""
    if choices:
        return SglSelect(
            name,
            choices,
            0.0 if temperature is None else temperature,
            token_length_normalized if choices_method is None else choices_method,
        )
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"gen(regex=...): {regex!r} is not a regular expression: {e}") from None
    return SglGen(
        name,
        SglSamplingParams(
            max_tokens,
            min_tokens,
            n,
            stop,
            stop_token_ids,
            stop_regex,
            temperature,
            top_p,
            top_k,
            min_p,
            frequency_penalty,
            presence_penalty,
            ignore_eos,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            return_text_in_logprobs,
            json_schema,
            dtype,
            regex,
        ),
    )


def gen_int(
    name: str | None = None,
    max_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
) -> SglExpr:
    return gen(
        name,
        max_tokens,
        None,
        n,
        stop,
        stop_token_ids,
        temperature,
        top_p,
        top_k,
        min_p,
        frequency_penalty,
        presence_penalty,
        ignore_eos,
        return_logprob,
        logprob_start_len,
        top_logprobs_num,
        return_text_in_logprobs,
        dtype=int,
    )


def gen_string(
    name: str | None = None,
    max_tokens: int | None = None,
    n: int | None = None,
    stop: str | list[str] | None = None,
    stop_token_ids: list[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
) -> SglExpr:
    return gen(
        name,
        max_tokens,
        None,
        n,
        stop,
        stop_token_ids,
        temperature,
        top_p,
        top_k,
        min_p,
        frequency_penalty,
        presence_penalty,
        ignore_eos,
        return_logprob,
        logprob_start_len,
        top_logprobs_num,
        return_text_in_logprobs,
        dtype=str,
    )


def select(
    name: str | None = None,
    choices: list[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesSamplingMethod = token_length_normalized,
) -> SglExpr:
    """Append the choice the model finds most likely after the state (by ``choices_method``)."""
    if not choices:
        raise ValueError("select() needs a non-empty list of choices")
    return SglSelect(name, choices, temperature, choices_method)


def image(expr: Any) -> SglExpr:
    return SglImage(expr)


def video(path: str, num_frames: int) -> SglExpr:
    return SglVideo(path, num_frames)


def _role(role: str, expr: SglExpr | str | None) -> SglExprList:
    inner = [] if expr is None else [_expr(expr)]
    return SglExprList([SglRoleBegin(role), *inner, SglRoleEnd(role)])


def system(expr: SglExpr | str | None = None) -> SglExprList:
    return _role("system", expr)


def user(expr: SglExpr | str | None = None) -> SglExprList:
    return _role("user", expr)


def assistant(expr: SglExpr | str | None = None) -> SglExprList:
    return _role("assistant", expr)


def system_begin() -> SglExpr:
    return SglRoleBegin("system")


def system_end() -> SglExpr:
    return SglRoleEnd("system")


def user_begin() -> SglExpr:
    return SglRoleBegin("user")


def user_end() -> SglExpr:
    return SglRoleEnd("user")


def assistant_begin() -> SglExpr:
    return SglRoleBegin("assistant")


def assistant_end() -> SglExpr:
    return SglRoleEnd("assistant")
