"""Admission: whether a request fits the model it is sent to. The engine asks before it queues a
request, the router before it sends one to a worker, with the same rules and the same messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from radixrt.engine.window import check_window
from radixrt.params import SamplingParams

if TYPE_CHECKING:
    from radixrt.engine.constraints import Grammars


@dataclass(frozen=True)
class ModelLimits:
    """What a request is checked against: the vocabulary, the context, the KV pool's tokens,
    whether there is a tokenizer for stop strings and constraints, and the KV page size."""

    vocab_size: int
    max_context: int
    kv_tokens: int
    has_tokenizer: bool = True
    page_size: int = 1

    def max_prompt(self, windowed: bool) -> int:
        """The longest prompt plus one: a window has no context limit (only a sanity cap)."""
        return MAX_WINDOWED_PROMPT if windowed else min(self.max_context, self.kv_tokens)


MAX_WINDOWED_PROMPT = 1 << 22


def check_prompt(
    tokens: np.ndarray, limits: ModelLimits, prompt_logprobs_from: int | None = None, windowed: bool = False
) -> None:
    """Raise ``ValueError`` naming what makes ``tokens`` no prompt for this model: empty, ids
    outside the vocabulary, not shorter than the tighter of the context and the KV cache (unless
    ``windowed``), or a ``prompt_logprobs_from`` that is not a position in it."""
    vocab_size, max_context, kv_tokens = limits.vocab_size, limits.max_context, limits.kv_tokens
    if tokens.size == 0:
        raise ValueError("the prompt is empty")
    bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
    if bad.size:
        raise ValueError(f"token ids {bad[:4].tolist()} are outside the vocabulary (0..{vocab_size - 1})")
    if tokens.size >= limits.max_prompt(windowed):
        if windowed:
            limit = f"a windowed one is at most {MAX_WINDOWED_PROMPT - 1}"
        elif max_context <= kv_tokens:
            limit = f"the model's context is {max_context}"
        else:
            limit = f"the KV cache holds {kv_tokens}"
        raise ValueError(f"the prompt has {tokens.size} tokens; {limit}")
    if prompt_logprobs_from is not None and (
        isinstance(prompt_logprobs_from, bool)
        or not isinstance(prompt_logprobs_from, int)
        or not 1 <= prompt_logprobs_from < tokens.size
    ):
        raise ValueError(
            f"prompt_logprobs_from must be a position in 1..{tokens.size - 1}, got {prompt_logprobs_from!r}"
        )


def admit(
    tokens: np.ndarray,
    params: SamplingParams,
    limits: ModelLimits,
    grammars: Grammars | None = None,
    *,
    prompt_logprobs_from: int | None = None,
    score_next: Sequence[int] = (),
) -> tuple[int, ...]:
    """Raise ``ValueError`` naming what makes this request unfit for the model; returns
    ``score_next`` as ints. A constraint is compiled (``grammars``; xgrammar caches it), so one
    that cannot compile is refused here, before anything runs."""
    params.validate(limits.vocab_size)
    check_window(params.sink_tokens, params.kv_window, limits.page_size, limits.kv_tokens)
    check_prompt(tokens, limits, prompt_logprobs_from, windowed=params.kv_window is not None)
    if params.stop and not limits.has_tokenizer:
        raise ValueError("stop strings need a tokenizer, and this model ships none: use stop_token_ids")
    if any(not isinstance(t, (int, np.integer)) or isinstance(t, bool) for t in score_next):
        raise ValueError(f"score_next must be token ids, got {score_next!r}")
    score_next = tuple(int(t) for t in score_next)
    if bad := [t for t in score_next if not 0 <= t < limits.vocab_size]:
        raise ValueError(f"score_next token ids {bad[:4]} are outside the vocabulary (0..{limits.vocab_size - 1})")
    if params.constrained:
        if grammars is None:
            raise ValueError("constraints need a tokenizer, and this model ships none")
        grammars.compile(params)
    return score_next


def check_retention(
    retain: Sequence[tuple[int, float]],
    prompt_len: int,
    cost: Callable[[int], int],
    retained: Callable[[], int],
    cap: int,
    namespace,
) -> list[tuple[int, float]]:
    """The (tokens, ttl) retentions a request asks for, checked: each a prefix of its prompt with a
    positive ttl, and the namespace's retained pages (``retained()``, asked only when the request
    adds any: renewing what is retained costs nothing) plus ``cost(tokens)``, the pages the longest
    of these adds, within ``cap`` pages. ``ValueError`` names what is wrong."""
    out = []
    for item in retain:
        tokens, ttl = int(item[0]), float(item[1])
        if not 0 < tokens <= prompt_len or not ttl > 0:
            raise ValueError(f"a retention is (tokens in 1..{prompt_len}, ttl > 0 seconds), got {tuple(item)}")
        out.append((tokens, ttl))
    pages = cost(max(tokens for tokens, _ in out)) if out else 0
    if pages and (now := retained()) + pages > cap:
        raise ValueError(
            f"retaining {pages} more pages would take namespace {namespace!r} past its retention cap of "
            f"{cap} pages ({now} retained now): wait for retentions to expire, or retain less"
        )
    return out


def check_resumed(tokens: list[int], resumed: int, constraint) -> None:
    """``resumed`` counts the prompt's last tokens that are the request's own output so far: never
    the whole prompt, and its constraint, if any, must take them (they move the matcher on)."""
    if isinstance(resumed, bool) or not isinstance(resumed, int) or not 0 <= resumed < len(tokens):
        raise ValueError(
            f"resumed must be a count of the prompt's last tokens in 0..{len(tokens) - 1}, got {resumed!r}"
        )
    if (
        constraint is not None
        and resumed
        and not all(constraint.accept_token(t) for t in tokens[len(tokens) - resumed :])
    ):
        raise ValueError("the tokens generated so far do not fit the request's constraint")
