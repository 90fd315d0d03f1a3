"""``radixrt.lang``: SGLang's frontend language on radixrt. A program written for SGLang runs with
``import radixrt.lang as sgl``; see docs/lang.md for what differs and why."""

from radixrt.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from radixrt.lang.choices import greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from radixrt.lang.endpoint import RuntimeEndpoint
from radixrt.lang.global_config import global_config
from radixrt.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from radixrt.lang.runtime import Runtime
from radixrt.lang.state import ProgramState, ProgramStateGroup

__all__ = [
    "REGEX_BOOL",
    "REGEX_FLOAT",
    "REGEX_INT",
    "REGEX_STR",
    "ProgramState",
    "ProgramStateGroup",
    "Runtime",
    "RuntimeEndpoint",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]
