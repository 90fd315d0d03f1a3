"""Sampling parameters, validated: what a request asks of the sampler, shared by the engine, the
server's wire protocol and the clients (no torch here, so a client imports none)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

__all__ = ["GREEDY_EPS", "SamplingParams"]

MAX_TOP_LOGPROBS = 20
GREEDY_EPS = 1e-5
"""Temperatures below this are greedy: dividing logits by them overflows (as in SGLang)."""

# Caps on what one request may ask: the router scans every stop string at every step, and xgrammar's
# compile time grows fast with a constraint's size and depth (a schema nested 600 deep takes 16 s).
MAX_STOP = 16
MAX_STOP_CHARS = 512
MAX_STOP_TOKEN_IDS = 256
MAX_INT32 = 2**31 - 1  # max_new_tokens, min_new_tokens, top_k, kv_window
MAX_SINK_TOKENS = 1024  # StreamingLLM keeps 4
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch's manual_seed (a negative seed modulo 2**64) and msgpack take
MAX_REGEX_CHARS = 4096
MAX_SCHEMA_CHARS = 65536
MAX_SCHEMA_DEPTH = 32  # nested JSON objects and arrays in the schema's text
MAX_SCHEMA_PROPERTIES = 1000  # all objects' properties together: 1,000 optional ones compile in 0.8 s, 2,500 in 13 s
MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 4096
MAX_CHOICES_CHARS = 65536  # all choices together: compiling 128 choices of 4096 characters took a minute
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")


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
    kv_window: int | None = None  # attend to the last kv_window tokens only (and the sinks): memory stays bounded
    sink_tokens: int = 0  # with kv_window: the first tokens, always attended to (StreamingLLM's attention sinks)
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys end up here, to be refused

    def __post_init__(self) -> None:
        """Normalise what callers and wire messages naturally pass: ``stop="END"`` is one stop string,
        lists become tuples (hashable, immutable) and null means none."""
        if isinstance(self.json_schema, dict):
            try:
                object.__setattr__(self, "json_schema", json.dumps(self.json_schema))
            except (RecursionError, ValueError, TypeError):
                pass  # left a dict, for ``validate`` to refuse
        for name in _FLOAT_FIELDS:  # as the wire carries them: an integer of 2**64 or more would not encode
            value = getattr(self, name)
            if _integer(value) and abs(value) < 2**1023:
                object.__setattr__(self, name, float(value))
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
        """Raise ``ValueError`` naming every impossible parameter, and every one past the caps that
        keep a request's cost bounded (``MAX_STOP`` and the rest)."""
        problems = []
        if self.extra:
            names = sorted(str(k)[:64] for k in self.extra)
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            problems.append(f"unknown sampling parameter(s): {', '.join(names[:8])}{more}")
        if not _integer(self.max_new_tokens) or not 0 <= self.max_new_tokens <= MAX_INT32:
            problems.append(f"max_new_tokens must be an integer in 0..{MAX_INT32}, got {_brief(self.max_new_tokens)}")
        if not _integer(self.min_new_tokens) or not 0 <= self.min_new_tokens <= (
            min(self.max_new_tokens, MAX_INT32) if _integer(self.max_new_tokens) else 0
        ):
            problems.append(
                f"min_new_tokens must be an integer in 0..max_new_tokens, got {_brief(self.min_new_tokens)}"
            )
        if not _finite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 is greedy), got {_brief(self.temperature)}")
        if not _integer(self.top_k) or not 0 <= self.top_k <= MAX_INT32:
            problems.append(f"top_k must be an integer in 0..{MAX_INT32} (0 is off), got {_brief(self.top_k)}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {_brief(self.top_p)}")
        if not _finite(self.min_p) or not 0 <= self.min_p < 1:
            problems.append(f"min_p must be in [0, 1), got {_brief(self.min_p)}")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {_brief(self.repetition_penalty)}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                problems.append(f"{name} must be in [-2, 2], got {_brief(value)}")
        if not _integer(self.top_logprobs) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(
                f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {_brief(self.top_logprobs)}"
            )
        low, high = SEED_RANGE
        if self.seed is not None and (not _integer(self.seed) or not low <= self.seed <= high):
            problems.append(
                f"seed must be a 64-bit integer in -2**63..2**64-1 (a negative seed is taken modulo 2**64), "
                f"got {_brief(self.seed)}"
            )
        problems += self._stop_problems(vocab_size)
        problems += self._constraint_problems()
        problems += self._window_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _stop_problems(self, vocab_size: int) -> list[str]:
        problems = []
        if not isinstance(self.stop, tuple) or any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a non-empty string or a list of them, got {_brief(self.stop)}")
        elif len(self.stop) > MAX_STOP:
            problems.append(f"stop takes at most {MAX_STOP} strings, got {len(self.stop)}")
        elif any(len(s) > MAX_STOP_CHARS for s in self.stop):
            longest = max(len(s) for s in self.stop)
            problems.append(f"a stop string is at most {MAX_STOP_CHARS} characters, got one of {longest}")
        if not isinstance(self.stop_token_ids, tuple):
            problems.append(f"stop_token_ids must be a list of token ids, got {_brief(self.stop_token_ids)}")
        elif len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            problems.append(f"stop_token_ids takes at most {MAX_STOP_TOKEN_IDS} ids, got {len(self.stop_token_ids)}")
        else:
            bad = [_brief(t) for t in self.stop_token_ids if not _integer(t) or not 0 <= t < vocab_size]
            if bad:
                problems.append(
                    f"stop_token_ids [{', '.join(bad[:4])}] are not token ids of the vocabulary (0..{vocab_size - 1})"
                )
        return problems

    def _window_problems(self) -> list[str]:
        """The window's own ranges; that it holds at least a page is the engine's to check."""
        problems = []
        if self.kv_window is not None and (not _integer(self.kv_window) or not 1 <= self.kv_window <= MAX_INT32):
            problems.append(f"kv_window must be an integer in 1..{MAX_INT32} (tokens), got {_brief(self.kv_window)}")
        if not _integer(self.sink_tokens) or not 0 <= self.sink_tokens <= MAX_SINK_TOKENS:
            problems.append(f"sink_tokens must be an integer in 0..{MAX_SINK_TOKENS}, got {_brief(self.sink_tokens)}")
        elif self.sink_tokens and self.kv_window is None:
            problems.append(f"sink_tokens ({self.sink_tokens}) needs a kv_window: sinks are kept beside a window")
        return problems

    def _constraint_problems(self) -> list[str]:
        problems = []
        given = [n for n in ("regex", "json_schema", "choices") if getattr(self, n) is not None]
        if len(given) > 1:
            problems.append(f"give at most one of regex, json_schema and choices (got {', '.join(given)})")
        for name, cap in (("regex", MAX_REGEX_CHARS), ("json_schema", MAX_SCHEMA_CHARS)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                problems.append(f"{name} must be a non-empty string, got {_brief(value)}")
            elif value is not None and len(value) > cap:
                problems.append(f"{name} must be at most {cap} characters, got {len(value)}")
            elif name == "json_schema" and value is not None:
                problems += _schema_problems(value)
        choices = self.choices
        if choices is not None and (
            not isinstance(choices, tuple) or not choices or any(not isinstance(c, str) or not c for c in choices)
        ):
            problems.append(f"choices must be a non-empty list of non-empty strings, got {_brief(choices)}")
        elif choices is not None and len(choices) > MAX_CHOICES:
            problems.append(f"choices takes at most {MAX_CHOICES} strings, got {len(choices)}")
        elif choices is not None and max(len(c) for c in choices) > MAX_CHOICE_CHARS:
            longest = max(len(c) for c in choices)
            problems.append(f"a choice is at most {MAX_CHOICE_CHARS} characters, got one of {longest}")
        elif choices is not None and sum(len(c) for c in choices) > MAX_CHOICES_CHARS:
            total = sum(len(c) for c in choices)
            problems.append(f"choices must have at most {MAX_CHOICES_CHARS} characters in all, got {total}")
        return problems

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        """Build from a plain dict (a wire message); unknown keys are kept so ``validate`` names them."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra={k: v for k, v in values.items() if k not in known})


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: object) -> bool:
    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:  # an integer past a float's range
        return False


def _brief(value: object) -> str:
    """``value`` for an error message, short whatever a caller sent."""
    if _integer(value) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a container of integers too long to print
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:72]}...({len(text)} characters)"


@functools.lru_cache(maxsize=64)
def _schema_problems(schema: str) -> tuple[str, ...]:
    """Why ``schema`` is no JSON, nests past ``MAX_SCHEMA_DEPTH`` or has more than
    ``MAX_SCHEMA_PROPERTIES`` properties, walked without recursion. Cached: the same schema is
    checked at every hop (HTTP, router, worker) and by every request that shares it."""
    try:
        parsed = json.loads(schema)
    except RecursionError:
        return (f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels",)
    except ValueError as e:
        return (f"json_schema is not JSON: {e}",)
    stack, properties = [(parsed, 1)] if isinstance(parsed, (dict, list)) else [], 0
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > MAX_SCHEMA_DEPTH:
            return (f"json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels",)
        if isinstance(value, dict) and isinstance(value.get("properties"), dict):
            properties += len(value["properties"])
            if properties > MAX_SCHEMA_PROPERTIES:
                return (f"json_schema has more than {MAX_SCHEMA_PROPERTIES} properties in all",)
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return ()
