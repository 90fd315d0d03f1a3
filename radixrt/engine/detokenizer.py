"""Text of a growing list of token ids, decoded a few tokens at a time rather than from the start
each time (which costs O(n^2) over a long output)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass
class IncrementalDetokenizer:
    """Each call decodes a window that starts one committed step back, so the tokenizer still
    sees the context that decides joins (a leading space, bytes merged into one character); the
    new text is the window's text past that context. Text that ends in an incomplete UTF-8
    character (decoded as U+FFFD) waits for the tokens that complete it, unless ``final``."""

    tokenizer: PreTrainedTokenizerBase
    text: str = ""
    context_at: int = 0  # the window starts here
    read_at: int = 0  # tokens before this are in ``text``

    def update(self, ids: list[int], final: bool = False) -> str:
        """``text`` for ``ids`` (the whole output so far; earlier calls' ids are its prefix)."""
        if len(ids) > self.read_at:
            decode = lambda part: self.tokenizer.decode(part, skip_special_tokens=True)  # noqa: E731
            context = decode(ids[self.context_at : self.read_at])
            window = decode(ids[self.context_at :])
            if final or (len(window) > len(context) and not window.endswith("\ufffd")):
                self.text += window[len(context) :]
                self.context_at, self.read_at = self.read_at, len(ids)
        return self.text
