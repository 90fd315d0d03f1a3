"""What the router does with a request before any worker sees it: its prompt to token ids, its
sampling parameters from the wire, and admission by the engine's own rules against the workers'
model (a constraint is compiled here, so a bad one is refused before it reaches a worker)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from radixrt.engine.admission import ModelLimits, admit
from radixrt.engine.constraints import Grammars
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.output_text import OutputText
from radixrt.outputs import GenerateOutput
from radixrt.params import SamplingParams
from radixrt.prompts import prompt_ids
from radixrt.server.bookkeeping import Job
from radixrt.wire import protocol as p
from radixrt.wire.tokenizer_files import tokenizer_files


class Refused(Exception):
    """A request the router does not take; ``code`` is the wire error's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_room(msg: p.Generate, in_flight: dict[str, Any], pinned: bool, max_inflight: int, workers: int) -> None:
    """Refuse a request whose id is taken, a client at its limit, or any request with no worker."""
    if msg.id in in_flight:
        raise Refused("duplicate_id", f"request id {msg.id!r} is already in flight")
    if msg.pin and pinned:
        raise Refused("duplicate_id", f"request id {msg.id!r} names a pin already: unpin it first")
    if len(in_flight) >= max_inflight:
        raise Refused(
            "too_many_requests",
            f"this client has {len(in_flight)} requests in flight, the most allowed; wait for one to end",
        )
    if not workers:
        raise Refused("unavailable", "no worker is connected")


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
        limits = ModelLimits(
            first.vocab_size,
            first.max_context,
            min(w.num_pages * w.page_size for w in workers),
            self.tokenizer is not None,
        )
        if params.constrained and self.tokenizer is not None and self._grammars is None:
            self._grammars = Grammars(self.tokenizer, first.vocab_size)
        score_next = admit(
            prompt,
            params,
            limits,
            self._grammars if params.constrained else None,
            prompt_logprobs_from=msg.prompt_logprobs_from,
            score_next=msg.score_next or (),
        )
        return prompt, params, score_next

    def job(self, client: bytes, msg: p.Generate, key: str, workers: list[p.Register]) -> Job:
        """The request as the router keeps it while it runs, or ``Refused`` naming what is wrong."""
        try:
            prompt, params, score_next = self.admit(msg, workers)
        except ValueError as e:
            raise Refused("invalid_request", str(e)) from None
        except Exception as e:  # the tokenizer choked on the text: this request's fault alone
            raise Refused("invalid_request", f"the prompt could not be tokenized: {type(e).__name__}: {e}") from None
        text = OutputText(IncrementalDetokenizer(self.tokenizer), params.stop) if self.tokenizer is not None else None
        return Job(
            key,
            client,
            msg.id,
            prompt.astype(np.int32),
            params,
            msg.namespace,
            msg.stream,
            msg.prompt_logprobs_from,
            text,
            GenerateOutput(key, arrival=time.time()),
            pin=msg.pin,
            score_next=list(score_next),
        )

    def tokenizer_files(self) -> dict[str, bytes]:
        if self._files is None:
            self._files = tokenizer_files(self.tokenizer)
        return self._files
