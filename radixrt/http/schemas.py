"""What the OpenAI-compatible API takes and how it says no: the bodies of ``/v1/completions`` and
``/v1/chat/completions`` as msgspec structs, the ``SamplingParams`` a body asks for, and OpenAI's error
shape, ``{"error": {"message", "type", "param", "code"}}``, with its status.

Unknown fields are refused with a 400 naming the field (a misspelt parameter must not be ignored
silently), as the wire protocol does. Beyond OpenAI's fields, a body takes the extensions of vLLM's
and SGLang's OpenAI servers that clients send (guidellm, vLLM's and SGLang's benchmarks) where they map
onto radixrt's sampler: ``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``stop_token_ids``, ``ignore_eos``, ``stream_options.continuous_usage_stats``, and a constraint in
either server's spelling. ``best_of`` and ``skip_special_tokens`` are taken when they ask for what
radixrt does anyway, and refused otherwise.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec

from radixrt.client import ServerError
from radixrt.params import SamplingParams
from radixrt.wire.protocol import MAX_RETAINS, Retain

CHAT_MAX_TOKENS = 4096  # when a chat request sets no limit: clipped by the engine to what fits
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for completions

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_SERVER_STATUS = {
    "invalid_request": 400,
    "bad_message": 400,
    "duplicate_id": 400,
    "too_many_requests": 429,
    "unavailable": 503,
    "connection_lost": 503,
}


class ApiError(Exception):
    """An error to answer in OpenAI's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    @classmethod
    def from_server(cls, e: ServerError) -> ApiError:
        """The router's refusal, with the status its code stands for."""
        return cls(_SERVER_STATUS.get(e.code, 500), str(e).split(": ", 1)[-1], code=e.code)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": _ERROR_TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


TTLS = {"5m": 300.0, "1h": 3600.0}  # Anthropic's cache_control ttls
RETENTIONS = {"in_memory": 600.0, "24h": 86400.0}  # OpenAI's prompt_cache_retention


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: with include_usage, every chunk carries the usage so far


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    json_schema: dict[str, Any] | None = None


class StructuredOutputs(msgspec.Struct, forbid_unknown_fields=True):
    """vLLM's ``structured_outputs``, the kinds radixrt enforces (no ``grammar`` nor ``structural_tag``)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None


class Common(msgspec.Struct, forbid_unknown_fields=True):
    """What both endpoints take."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # the cache namespace with --namespace-by user; otherwise OpenAI's abuse tag, unused
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    response_format: ResponseFormat | None = None
    # vLLM's and SGLang's sampling extensions
    ignore_eos: bool = False  # generate max_tokens whatever comes
    top_k: int | None = None  # 0 and -1 (SGLang's default) are off
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    kv_window: int | None = None  # attention sinks and a sliding window (StreamingLLM): memory stays bounded
    sink_tokens: int = 0
    # constraints in vLLM's spellings (structured_outputs; guided_* before it) and SGLang's (regex, json_schema)
    structured_outputs: StructuredOutputs | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    regex: str | None = None
    json_schema: str | None = None
    # the prompt cache: OpenAI's routing key and retention
    prompt_cache_key: str | None = None  # requests with the same key go to the same worker
    prompt_cache_retention: str | None = None  # "in_memory" or "24h": the whole prompt stays cached that long
    # taken when they ask for what radixrt does anyway
    best_of: int | None = None  # the n samples are the n best: best_of, if given, must equal n
    skip_special_tokens: bool = True  # radixrt's text never has special tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options is not None and self.stream_options.continuous_usage_stats

    def check(self) -> None:
        if not 1 <= self.n <= 16:
            raise ApiError(400, f"n must be in 1..16, got {self.n}", "n")
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(
                400, f"best_of must equal n ({self.n}): radixrt returns every sample, got {self.best_of}", "best_of"
            )
        if not self.skip_special_tokens:
            raise ApiError(
                400,
                "skip_special_tokens: false is not supported: the text never has special tokens",
                "skip_special_tokens",
            )

    def cache_options(self) -> dict[str, Any]:
        """The client's ``retain`` and ``route_key`` for this body's prompt."""
        retain = list(self.breakpoints())
        if self.prompt_cache_retention is not None:
            if self.prompt_cache_retention not in RETENTIONS:
                raise ApiError(
                    400,
                    f"prompt_cache_retention is one of {', '.join(RETENTIONS)}, got {self.prompt_cache_retention!r}",
                    "prompt_cache_retention",
                )
            retain.append(Retain(RETENTIONS[self.prompt_cache_retention]))
        if len(retain) > MAX_RETAINS:
            raise ApiError(400, f"at most {MAX_RETAINS} cache breakpoints a request, got {len(retain)}", "messages")
        return {"retain": retain, "route_key": self.prompt_cache_key}

    def breakpoints(self) -> list[Retain]:
        return []

    def sampling(self, max_tokens: int, logprobs: bool, top_logprobs: int) -> SamplingParams:
        """The sampler's parameters this body asks for; a 400 naming the impossible ones."""
        stop = self.stop if self.stop is None or isinstance(self.stop, str) else tuple(self.stop)
        params = SamplingParams(
            max_new_tokens=max_tokens,
            min_new_tokens=self.min_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0 if self.top_k in (None, -1) else self.top_k,
            min_p=0.0 if self.min_p is None else self.min_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            seed=self.seed,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            kv_window=self.kv_window,
            sink_tokens=self.sink_tokens,
            **self._constraint(),
        )
        try:
            params.validate(1 << 31)  # the vocabulary is the router's to check
        except ValueError as e:
            raise ApiError(400, str(e).replace("_new_tokens", "_tokens")) from None
        return params

    def _constraint(self) -> dict[str, Any]:
        """The one constraint asked for, as ``SamplingParams`` keywords (regex, json_schema or choices)."""
        so = self.structured_outputs or StructuredOutputs()
        given = {
            name: (kind, value)
            for name, kind, value in (
                ("response_format", "json_schema", _response_schema(self.response_format)),
                ("structured_outputs.json", "json_schema", so.json),
                ("structured_outputs.regex", "regex", so.regex),
                ("structured_outputs.choice", "choices", so.choice),
                ("guided_json", "json_schema", self.guided_json),
                ("guided_regex", "regex", self.guided_regex),
                ("guided_choice", "choices", self.guided_choice),
                ("regex", "regex", self.regex),
                ("json_schema", "json_schema", self.json_schema),
            )
            if value is not None
        }
        if len(given) > 1:
            raise ApiError(400, f"give one constraint at most, got {', '.join(given)}", list(given)[1].split(".")[0])
        return {kind: tuple(value) if kind == "choices" else value for kind, value in given.values()}


class CompletionBody(Common):
    prompt: Any = None  # text, token ids, or a list of either
    logprobs: int | None = None  # each chosen token's logprob, and this many most likely tokens' (0..20)

    def prompts(self) -> list[Any]:
        """Completions take text, token ids, or a list of either."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt:
            if _token_ids(prompt):
                return [prompt]
            if all(isinstance(p, str) for p in prompt) or all(
                isinstance(p, list) and p and _token_ids(p) for p in prompt
            ):
                return list(prompt)
        raise ApiError(400, "prompt must be a string, a list of token ids, or a non-empty list of either", "prompt")

    def params(self) -> SamplingParams:
        limit = COMPLETION_MAX_TOKENS if self.max_tokens is None else self.max_tokens
        return self.sampling(limit, self.logprobs is not None, self.logprobs or 0)


class ChatBody(Common):
    messages: list[dict[str, Any]] = []
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def prompts(self) -> list[Any]:
        """One prompt: the conversation, for the router to apply the model's chat template to."""
        if not self.messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        return [[_message(m, i) for i, m in enumerate(self.messages)]]

    def breakpoints(self) -> list[Retain]:
        """Anthropic-style ``cache_control`` on content parts: the chat through that message stays
        cached for the part's ttl ("5m" by default, or "1h") after its last use."""
        out = []
        for index, message in enumerate(self.messages):
            parts = message.get("content") if isinstance(message, dict) else None
            ttls = (
                [_cache_ttl(part, index) for part in parts if "cache_control" in part]
                if isinstance(parts, list)
                else []
            )
            if ttls:
                out.append(Retain(max(ttls), message=index))
        return out

    def params(self) -> SamplingParams:
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.sampling(CHAT_MAX_TOKENS if limit is None else limit, self.logprobs, self.top_logprobs or 0)


Body = TypeVar("Body", bound=Common)


def parse(raw: bytes, kind: type[Body]) -> Body:
    """The body ``raw`` holds, checked; a 400 naming the field that is wrong."""
    try:
        body = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as e:
        text = str(e)
        where = text.rsplit(" - at `$.", 1)
        param = where[1].rstrip("`").split("[")[0].split(".")[0] if len(where) == 2 else None
        raise ApiError(400, text, param) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    body.check()
    return body


def _token_ids(values: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in values)


def _message(message: dict[str, Any], index: int) -> dict[str, str]:
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or set(message) - {"role", "content", "name"}:
        raise ApiError(
            400, f"messages[{index}] must have a role and a content (and nothing else but a name)", "messages"
        )
    if isinstance(content, list):  # content parts: text only (with a cache_control, if any)
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
        ) or any(set(p) - {"type", "text", "cache_control"} for p in content):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts", "messages")
    return {"role": role, "content": content}


def _cache_ttl(part: dict[str, Any], index: int) -> float:
    control = part["cache_control"]
    if not isinstance(control, dict) or control.get("type") != "ephemeral" or control.get("ttl", "5m") not in TTLS:
        raise ApiError(
            400,
            f'messages[{index}]: cache_control is {{"type": "ephemeral"}}, with "ttl" "5m" (the default) or "1h"',
            "messages",
        )
    return TTLS[control.get("ttl", "5m")]


def _response_schema(fmt: ResponseFormat | None) -> str | None:
    """The JSON schema ``response_format`` asks for (None for text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    if fmt.type == "json_schema" and fmt.json_schema is not None and isinstance(fmt.json_schema.get("schema"), dict):
        return json.dumps(fmt.json_schema["schema"])
    raise ApiError(
        400,
        'response_format is {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
        '"json_schema": {"name": ..., "schema": {...}}}',
        "response_format",
    )
