"""A request's output text as the caller sees it: decoded incrementally, cut before the first
stop string, and streamed without anything that could still turn out to be a stop string."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from radixrt.engine.detokenizer import IncrementalDetokenizer


@dataclass
class OutputText:
    detokenizer: IncrementalDetokenizer
    stops: tuple[str, ...] = ()
    sent: int = 0  # characters already handed out by ``take``
    end: int | None = None  # where the text ends: set when a stop string is found
    matched: str | None = None
    _searched: int = field(default=0, repr=False)  # stop strings were looked for in text[:_searched]

    @property
    def text(self) -> str:
        return self.detokenizer.text[: self.end]

    def update(self, ids: list[int], final: bool = False) -> str | None:
        """Decode ``ids`` (the generated tokens so far, without a final stop token); returns the
        stop string that ends the text, if one appeared. The earliest occurrence wins."""
        text = self.detokenizer.update(ids, final)
        if self.end is None and self.stops and len(text) > self._searched:
            start = max(0, self._searched - max(map(len, self.stops)) + 1)
            found = [(at, s) for s in self.stops if (at := text.find(s, start)) >= 0]
            self._searched = len(text)
            if found:
                self.end, self.matched = min(found)
        return self.matched

    def feed(self, ids: list[int], stop_token: bool, final: bool) -> str | None:
        """``update`` with every generated token so far, of which the last is a stop token (EOS or
        a stop token id: not part of the text) when ``stop_token``."""
        return self.update(ids[:-1] if stop_token else ids, final=stop_token or final)

    def take(self, final: bool = False) -> str:
        """The text not handed out yet that is safe to hand out now (all of it when ``final``)."""
        text = self.detokenizer.text
        end = self.end if self.end is not None else len(text) if final else len(text) - self._could_be_stop(text)
        piece = text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def tokens_behind(self, ids: list[int]) -> int:
        """How many leading ``ids`` decode to a prefix of ``text``: all of them unless a stop
        string cut the text, then those before the token the stop string began in (or ended in,
        when it began on a token boundary)."""
        if self.end is None:
            return len(ids)
        text = self.text
        for k in range(len(ids), -1, -1):
            if text.startswith(self.detokenizer.tokenizer.decode(ids[:k], skip_special_tokens=True)):
                return k
        return 0

    def _could_be_stop(self, text: str) -> int:
        """The length of the longest tail of ``text`` that a stop string begins with."""
        for k in range(min(len(text), max(map(len, self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stops):
                return k
        return 0


def text_token_count(text: OutputText | None, output: Sequence[int], stop_token: bool) -> int:
    """How many of the generated ``output`` stand behind the output text (``RequestOutput``'s
    ``text_token_count``): a stop token that ended the request never does, nor a token that a stop
    string cut."""
    ids = output[:-1] if stop_token else output
    return text.tokens_behind(ids) if text is not None else len(ids)
