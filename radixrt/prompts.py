"""Prompts to token ids: text, token ids or a chat, the one way the engine, the router and the
replayer all turn them into what the model reads. No torch here: the router and tools import it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Prompt = str | Sequence[int] | np.ndarray
Chat = list[dict[str, str]]


def chat_ids(tokenizer: Any, messages: Chat, add_generation_prompt: bool = True) -> list[int]:
    """The chat through the model's chat template, with the assistant's turn opened; a template that
    refuses the conversation (roles out of order, say) raises ``ValueError`` naming why."""
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except Exception as e:
        raise ValueError(f"the chat template refused these messages: {e}") from None
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding


def prompt_ids(prompt: Prompt | Chat, tokenizer: Any = None) -> np.ndarray:
    """``prompt`` as int64 token ids (so that no id wraps before it is checked against a vocabulary):
    text is encoded without special tokens, a chat goes through the chat template. Raises
    ``ValueError`` naming what is wrong."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict)):
        if tokenizer is None:
            raise ValueError("this model ships no tokenizer: give prompts as token ids")
        ids = (
            tokenizer.encode(prompt, add_special_tokens=False)
            if isinstance(prompt, str)
            else chat_ids(tokenizer, prompt)
        )
        return np.asarray(ids, dtype=np.int64)
    if isinstance(prompt, np.ndarray) and prompt.ndim == 1 and prompt.dtype.kind in "iu":
        return prompt.astype(np.int64, copy=False)
    if (
        isinstance(prompt, (bytes, dict))
        or not isinstance(prompt, Sequence)
        or any(not isinstance(t, (int, np.integer)) or isinstance(t, bool) for t in prompt)
    ):
        raise ValueError("a prompt is a string, a chat or a sequence of integer token ids")
    try:
        return np.asarray(prompt, dtype=np.int64) if len(prompt) else np.zeros(0, dtype=np.int64)
    except OverflowError:
        raise ValueError("token ids must fit in 64 bits") from None


def chat_prefix_length(tokenizer: Any, messages: Chat, through: int, ids: Sequence[int]) -> int:
    """How many of ``ids`` (``messages`` through the chat template) render messages ``0..through``:
    the prefix a cache breakpoint on message ``through`` names."""
    if not 0 <= through < len(messages):
        raise ValueError(f"a retained message index must be in 0..{len(messages) - 1}, got {through}")
    head = chat_ids(tokenizer, messages[: through + 1], add_generation_prompt=False)
    n = min(len(head), len(ids))
    differ = np.flatnonzero(np.asarray(head[:n]) != np.asarray(ids[:n]))
    return int(differ[0]) if differ.size else n
