"""What the router does with a request before any worker sees it: its prompt to token ids, its
sampling parameters from the wire, and admission by the engine's own rules against the workers'
model (a constraint is compiled here, so a bad one is refused before it reaches a worker)."""
from __future__ import annotations

from typing import Any

import numpy as np

from radixrt.engine.admission import ModelLimits, admit
from radixrt.engine.constraints import Grammars
from radixrt.params import SamplingParams
from radixrt.prompts import prompt_ids
from radixrt.wire import protocol as p
from radixrt.wire.tokenizer_files import tokenizer_files


class Intake:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._grammars: Grammars | None = None  # made on the first constrained request
        self._files: dict[str, bytes] | None = None

    def admit(self, msg: p.Generate, workers: list[p.Register]) -> tuple[np.ndarray, SamplingParams, tuple[int, ...]]:
        """The request's prompt ids, parameters and ``score_next``; ``ValueError`` names what is wrong."""
        given = [name for name in ("prompt", "input_ids", "messages") if getattr(msg, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, input_ids and messages (got {', '.join(given) or 'none'})")
        chat = [{"role": m.role, "content": m.content} for m in msg.messages] if msg.messages is not None else None
        prompt = prompt_ids(next(v for v in (msg.prompt, msg.input_ids, chat) if v is not None), self.tokenizer)
        params = p.sampling_params(msg.params)
        first = workers[0]
        limits = ModelLimits(first.vocab_size, first.max_context, min(w.num_pages * w.page_size for w in workers),
                             self.tokenizer is not None)
        if params.constrained and self.tokenizer is not None and self._grammars is None:
            self._grammars = Grammars(self.tokenizer, first.vocab_size)
        score_next = admit(prompt, params, limits, self._grammars if params.constrained else None,
                           prompt_logprobs_from=msg.prompt_logprobs_from, score_next=msg.score_next or ())
        return prompt, params, score_next

    def tokenizer_files(self) -> dict[str, bytes]:
        if self._files is None:
            self._files = tokenizer_files(self.tokenizer)
        return self._files
