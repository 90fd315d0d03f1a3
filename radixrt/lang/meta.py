"""A ``gen``'s meta info, as SGLang's: ``get_meta_info(name)`` describes the whole request; each
chunk of a streamed ``gen`` (``text_async_iter(name, return_meta_data=True)``) follows SGLang's
incremental streaming: its counts are the tokens so far (``completion_tokens`` equals
``output_token_logprobs_length``) and its ``output_token_logprobs`` and ``output_top_logprobs``
hold its own new tokens only, so that a reader who concatenates them has each token once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from radixrt.outputs import GenerateOutput, RequestOutput

TokenEntry = tuple[float, int, str | None]
"""``(logprob, token_id, text)``; the text only with ``return_text_in_logprobs``."""


@dataclass(frozen=True)
class LogprobFormat:
    """Which log-probabilities a gen's meta info holds (``return_logprob``, ``top_logprobs_num``),
    and the tokenizer that gives each token's text (``return_text_in_logprobs``), if any."""

    logprobs: bool = False
    top: int = 0
    tokenizer: Any = None

    def entries(self, logprobs: Sequence[float], token_ids: Sequence[int]) -> list[TokenEntry]:
        texts = self._texts(token_ids)
        return [(lp, t, text) for lp, t, text in zip(logprobs, token_ids, texts)]

    def top_entries(self, tops: Sequence[Sequence[tuple[int, float]]]) -> list[list[TokenEntry]]:
        """Per token, its most likely alternatives as entries, most likely first."""
        return [self.entries([lp for _, lp in top], [t for t, _ in top]) for top in tops]

    def _texts(self, token_ids: Sequence[int]) -> list[str | None]:
        if self.tokenizer is None:
            return [None] * len(token_ids)
        return self.tokenizer.batch_decode([[t] for t in token_ids])  # each token alone


class GenMeta:
    """A gen's meta info built as its outputs arrive: ``add`` each output, then ``chunk()`` for the
    tokens since the previous chunk, or ``final()`` for the whole request."""

    def __init__(self, fmt: LogprobFormat, scored_prompt: Sequence[int] = ()) -> None:
        self.fmt, self.scored_prompt = fmt, scored_prompt  # the prompt tokens whose logprobs were asked for
        self.whole: GenerateOutput | None = None
        self.chunked = 0  # tokens an earlier chunk covered
        self.prompt_tokens = self.cached_tokens = 0  # as known so far: a server's deltas leave them out

    def add(self, out: RequestOutput) -> GenerateOutput:
        """Take the next output; all of them so far, put together."""
        self.whole = (self.whole or GenerateOutput(out.request_id)).add(out)
        if out.prompt_tokens:
            self.prompt_tokens, self.cached_tokens = out.prompt_tokens, out.cached_tokens
        return self.whole

    def chunk(self) -> dict[str, Any]:
        start, self.chunked = self.chunked, len(self.whole.token_ids)
        return self._meta(start)

    def final(self) -> dict[str, Any]:
        meta = self._meta(0)
        if self.whole.prompt_logprobs is not None:
            meta["input_token_logprobs"] = self.fmt.entries(self.whole.prompt_logprobs, self.scored_prompt)
        return meta

    def _meta(self, start: int) -> dict[str, Any]:
        """Counts of every token so far; log-probabilities of the tokens from ``start`` on."""
        whole = self.whole
        counts = whole if whole.finished else self
        meta: dict[str, Any] = {
            "id": whole.request_id,
            "prompt_tokens": counts.prompt_tokens,
            "cached_tokens": counts.cached_tokens,
            "completion_tokens": len(whole.token_ids),
        }
        if whole.finished:
            meta["finish_reason"] = {"type": whole.finish_reason, "matched": whole.matched_stop}
        if self.fmt.logprobs and whole.logprobs is not None:
            meta["output_token_logprobs"] = self.fmt.entries(whole.logprobs[start:], whole.token_ids[start:])
            meta["output_token_logprobs_length"] = len(whole.logprobs)
            if self.fmt.top and whole.top_logprobs is not None:
                meta["output_top_logprobs"] = self.fmt.top_entries(whole.top_logprobs[start:])
        return meta
