"""Sampling parameters, validated: what a request asks of the sampler, shared by the engine, the
server's wire protocol and the clients (no torch here, so a client imports none)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

__all__ = ["GREEDY_EPS", "SamplingParams"]

MAX_TOP_LOGPROBS = 20
GREEDY_EPS = 1e-5
"""Temperatures below this are greedy: dividing logits by them overflows (as in SGLang)."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # end-of-sequence and stop tokens are refused until this many were generated
    temperature: float = 1.0  # below GREEDY_EPS (0 included) = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # matched on the decoded text; the stop string is not returned
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False  # log-probability of each chosen token
    top_logprobs: int = 0  # and of this many most likely tokens at each step (0..20)
    regex: str | None = None  # the output must match this regular expression ...
    json_schema: str | None = None  # ... or be JSON valid under this schema (a dict is taken too) ...
    choices: tuple[str, ...] | None = None  # ... or be one of these strings
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys end up here, to be refused

    def __post_init__(self) -> None:
        """Normalise what callers and wire messages naturally pass: ``stop="END"`` is one stop string,
        lists become tuples (hashable, immutable) and null means none."""
        if isinstance(self.json_schema, dict):
            object.__setattr__(self, "json_schema", json.dumps(self.json_schema))
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, list):
                value = tuple(value)
            elif name == "stop" and isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, value)

    @property
    def constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None or self.choices is not None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def validate(self, vocab_size: int) -> None:
        """Raise ``ValueError`` naming every impossible parameter."""
        problems = []
        if self.extra:
            problems.append(f"unknown sampling parameter(s): {', '.join(sorted(self.extra))}")
        if not _integer(self.max_new_tokens) or self.max_new_tokens < 0:
            problems.append(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if not _integer(self.min_new_tokens) or not 0 <= self.min_new_tokens <= (
            self.max_new_tokens if _integer(self.max_new_tokens) else 0
        ):
            problems.append(f"min_new_tokens must be an integer in 0..max_new_tokens, got {self.min_new_tokens!r}")
        if not _finite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not _integer(self.top_k) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0 is off), got {self.top_k!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _finite(self.min_p) or not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {self.min_p!r}")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                problems.append(f"{name} must be in [-2, 2], got {value!r}")
        if not _integer(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}")
        if self.seed is not None and not _integer(self.seed):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.stop, tuple) or any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, tuple):
            problems.append(f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}")
        else:
            bad = [t for t in self.stop_token_ids if not _integer(t) or not 0 <= t < vocab_size]
            if bad:
                problems.append(f"stop_token_ids {bad[:4]} are not token ids of the vocabulary (0..{vocab_size - 1})")
        given = [n for n in ("regex", "json_schema", "choices") if getattr(self, n) is not None]
        if len(given) > 1:
            problems.append(f"give at most one of regex, json_schema and choices (got {', '.join(given)})")
        for name in ("regex", "json_schema"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                problems.append(f"{name} must be a non-empty string, got {value!r}")
        if self.choices is not None and (
            not isinstance(self.choices, tuple)
            or not self.choices
            or any(not isinstance(c, str) or not c for c in self.choices)
        ):
            problems.append(f"choices must be a non-empty list of non-empty strings, got {self.choices!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Build from a plain dict (a wire message); unknown keys are kept so ``validate`` names them."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra={k: v for k, v in values.items() if k not in known})


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
