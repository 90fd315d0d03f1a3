"""What the engine reports: the output each step gives for a request, the whole output a caller
collects, a choice's score, and the error a failed request raises. No torch here: clients use them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


class RequestFailed(RuntimeError):
    """A request ended with finish reason "error"; the message names the cause."""


@dataclass
class RequestOutput:
    """What one step reports for one request: the tokens and text that are new since its last
    output, and, in its last output (``finished``), how it ended.

    Text rule: ``text`` pieces never contain a stop string nor anything that could still become
    one (such text is held back until it cannot); all pieces together are the output text, which
    is the generated tokens decoded, without a final stop token, and cut before the first stop
    string. ``text_token_count`` (last output only) says how many of the generated tokens stand
    behind that text: their decoding is a prefix of it, and what it lacks (``text`` past it) is
    at most the part of one token that preceded a stop string."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] | None = None  # of the new tokens, when asked for
    token_times: list[float] = field(default_factory=list)  # time.perf_counter() when each new token was sampled
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    matched_stop: str | int | None = None  # the stop string or stop token id that ended it
    error: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the radix cache (known from the first output on)
    text_token_count: int | None = None
    prompt_logprobs: list[float] | None = None  # last output only, when asked for
    next_logprobs: list[float] | None = None  # last output only: of the ``score_next`` tokens, when asked for
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per new token: (token id, logprob), most likely first


STREAMED = ("text", "token_ids", "logprobs", "token_times", "top_logprobs")
"""``RequestOutput`` fields that each output extends; the others but ``request_id`` and ``finished``
are the last output's alone (``FINAL``)."""
FINAL = tuple(f.name for f in fields(RequestOutput) if f.name not in (*STREAMED, "request_id", "finished"))


@dataclass
class GenerateOutput(RequestOutput):
    """A request's outputs put together: ``add`` each ``RequestOutput`` in order. The one
    accumulator of outputs: the engine's ``generate``, the clients and the language use it. Its
    fields are ``RequestOutput``'s (covering the whole request) and when it was queued."""

    arrival: float = 0.0  # when the request was queued (the clock of ``token_times``)

    def add(self, out: RequestOutput) -> GenerateOutput:
        for name in STREAMED:
            new = getattr(out, name)
            if new is not None:
                old = getattr(self, name)
                setattr(self, name, new if old is None else old + new)
        if out.finished:
            self.finished = True
            for name in FINAL:
                setattr(self, name, getattr(out, name))
        return self

    @property
    def text_token_ids(self) -> list[int]:
        """The generated tokens that stand behind ``text`` (see ``RequestOutput``)."""
        return self.token_ids[: self.text_token_count]

    @property
    def time_to_first_token(self) -> float | None:
        return self.token_times[0] - self.arrival if self.token_times else None

    @property
    def decode_time(self) -> float | None:
        """Seconds from the first token to the last."""
        return self.token_times[-1] - self.token_times[0] if self.token_times else None

    @property
    def inter_token_latencies(self) -> list[float]:
        return np.diff(self.token_times).tolist()


def choice_requests(prompt: list[int], options: list[list[int]]) -> list[tuple[list[int], dict]]:
    """The prompts (and their ``add_request`` options) that score each of ``options`` after
    ``prompt``: one request scores every option's first token (``score_next``, at the prompt's last
    position, computed once); each longer option adds one for its other tokens, which matches the
    prompt from the cache. An empty prompt scores the options alone (a first token counts 0)."""
    requests = [(prompt, {"score_next": sorted({o[0] for o in options})})] if prompt else []
    return requests + [(prompt + o, {"prompt_logprobs_from": len(prompt) + 1}) for o in options if len(o) > 1]


def choice_scores(prompt: list[int], options: list[list[int]], outputs: list) -> list[ChoiceScore]:
    """Each option's ``ChoiceScore`` from the finished outputs of ``choice_requests``, in order."""
    outputs = iter(outputs)
    first = dict(zip(sorted({o[0] for o in options}), next(outputs).next_logprobs)) if prompt else {}
    return [
        ChoiceScore((first.get(o[0], 0.0), *(next(outputs).prompt_logprobs if len(o) > 1 else ()))) for o in options
    ]


@dataclass(frozen=True)
class ChoiceScore:
    """A choice's per-token log-probabilities after the prompt: enough for every way of ranking
    choices (sum, mean per token, token by token)."""

    token_logprobs: tuple[float, ...]

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.num_tokens
