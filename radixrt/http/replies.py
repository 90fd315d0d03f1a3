"""OpenAI's response objects from the router's outputs: a whole ``text_completion`` or
``chat.completion``, or the same as server-sent chunks while the requests run, with usage (and, for
vLLM's ``continuous_usage_stats``, the usage so far in every chunk) and logprobs."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from radixrt.http.schemas import ApiError
from radixrt.outputs import RequestOutput


@dataclass
class Reply:
    """The answer to one request of ``n`` choices (for each prompt), whole or as stream chunks."""

    id: str
    model: str
    chat: bool
    include_usage: bool = False  # a last chunk with the usage of every choice
    continuous_usage: bool = False  # and every chunk with its choice's usage so far
    tokenizer: Any = None  # renders logprobs' tokens (their ids without one)
    created: int = field(default_factory=lambda: int(time.time()))

    def whole(self, results: list[list[RequestOutput]]) -> dict[str, Any]:
        choices = []
        for index, outs in enumerate(results):
            text = "".join(o.text for o in outs)
            choice: dict[str, Any] = {"index": index, "finish_reason": _finish(outs[-1])}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice["logprobs"] = self.logprobs(outs)
            choices.append(choice)
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(results),
        }

    async def events(self, runs: AsyncIterator[tuple[int, RequestOutput]], count: int) -> AsyncIterator[bytes]:
        """Server-sent events for ``count`` runs (``radixrt.http.runs.merged``): the choices' chunks
        as their outputs come, then the usage and ``[DONE]``. A run's error ends the stream with an
        error event (the other runs are cancelled by then); closing it early cancels every run."""
        results: list[list[RequestOutput]] = [[] for _ in range(count)]
        async with contextlib.aclosing(runs):
            try:
                async for index, item in runs:
                    if self.chat and not results[index]:  # the role comes first, with the prompt's usage
                        role = {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        yield self._chunk(index, role, [replace(item, token_ids=[])])
                    results[index].append(item)
                    finish = _finish(item) if item.finished else None
                    if item.text or finish or item.logprobs:
                        text = {"delta": {"content": item.text}} if self.chat else {"text": item.text}
                        yield self._chunk(
                            index, {**text, "logprobs": self.logprobs([item]), "finish_reason": finish}, results[index]
                        )
            except ApiError as e:
                yield _event(e.body())
            else:
                if self.include_usage:
                    yield _event(self._object([], usage([r for r in results if r])))
        yield b"data: [DONE]\n\n"

    def logprobs(self, outs: list[RequestOutput]) -> dict[str, Any] | None:
        """OpenAI's logprobs object for these outputs' tokens (None when not asked for)."""
        logprobs = [lp for o in outs for lp in (o.logprobs or [])]
        if not logprobs:
            return None
        ids = [t for o in outs for t in o.token_ids]
        tops = [top for o in outs for top in (o.top_logprobs or [])] or [[] for _ in ids]
        if self.chat:
            return {
                "content": [
                    {**self._token(t, lp), "top_logprobs": [self._token(u, v) for u, v in top]}
                    for t, lp, top in zip(ids, logprobs, tops)
                ]
            }
        return {
            "tokens": [self._text(t) for t in ids],
            "token_logprobs": logprobs,
            "text_offset": None,
            "top_logprobs": [{self._text(u): v for u, v in top} for top in tops] if any(tops) else None,
        }

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else str(token_id)

    def _token(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self._text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    def _chunk(self, index: int, choice: dict[str, Any], outs: list[RequestOutput]) -> bytes:
        """One choice's chunk; with continuous usage, its usage so far (what ``outs`` counted)."""
        return _event(self._object([{"index": index, **choice}], usage([outs]) if self.continuous_usage else None))

    def _object(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk


def usage(results: list[list[RequestOutput]]) -> dict[str, Any]:
    """OpenAI's usage of these choices' outputs (so far). A choice's prompt counts come with its last
    output (or with every one, when the router sends them)."""
    prompt = sum(max((o.prompt_tokens for o in outs), default=0) for outs in results)
    cached = sum(max((o.cached_tokens for o in outs), default=0) for outs in results)
    completion = sum(len(o.token_ids) for outs in results for o in outs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        # cache_write_tokens: the prompt tokens computed, which the cache takes (in whole pages)
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": prompt - cached},
    }


def _finish(out: RequestOutput) -> str:
    return "length" if out.finish_reason == "length" else "stop"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
