"""The wire protocol: every message between clients, the router and workers, as msgspec structs
encoded as msgpack maps, one message per ZeroMQ frame. ``docs/protocol.md`` is its specification.

Messages of each direction form one union tagged by the ``type`` key. Validation happens when a
frame is decoded: a frame that is not a valid message raises ``msgspec.ValidationError`` (or
``DecodeError``) naming the field, which the receiver turns into an ``Error`` reply. Sampling
parameters are the engine's ``SamplingParams`` fields; their ranges are checked by its
``validate`` on receipt, so a wire client and an in-process caller meet the same rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, field

from radixrt.outputs import GenerateOutput, RequestOutput
from radixrt.params import SamplingParams

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
"""Larger frames are refused by ZeroMQ itself, which drops the connection that sent one."""

Id = Annotated[str, Meta(min_length=1, max_length=256)]
Namespace = Annotated[str, Meta(max_length=256)] | None
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]


class Message(Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    pass


def _sampling_struct() -> type[Struct]:
    """``SamplingParams`` as a wire struct: the same fields, types and defaults (stop strings and
    stop token ids may also be a single string / a list)."""
    hints = typing.get_type_hints(SamplingParams)
    wire_types = {"stop": str | list[str] | None, "stop_token_ids": list[int] | None}
    fields = [
        (f.name, wire_types.get(f.name, hints[f.name]), f.default)
        for f in dataclasses.fields(SamplingParams)
        if f.name != "extra"
    ]
    return msgspec.defstruct("Sampling", fields, forbid_unknown_fields=True, omit_defaults=True, frozen=True)


Sampling = _sampling_struct()


def sampling_params(wire: Struct) -> SamplingParams:
    return SamplingParams(**msgspec.structs.asdict(wire))


def wire_sampling(params: SamplingParams, **changes: Any) -> Struct:
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(SamplingParams) if f.name != "extra"}
    values.update(stop=list(values["stop"]), stop_token_ids=list(values["stop_token_ids"]))
    return Sampling(**(values | changes))


# ---- client -> router ----------------------------------------------------------------------


class Hello(Message, tag="hello"):
    version: int
    client: Annotated[str, Meta(max_length=256)] = ""


class ChatMessage(Struct, forbid_unknown_fields=True):
    role: Annotated[str, Meta(min_length=1, max_length=64)]
    content: str


MAX_RETENTION_S = 7 * 24 * 3600.0
MAX_RETAINS = 4  # breakpoints a request may name, as Anthropic's cache_control allows


class Retain(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Keep a prefix of the prompt cached for ``ttl`` seconds after its last use (each hit renews
    it): its first ``tokens`` tokens, the chat through message ``message`` (a chat prompt), or,
    with neither, the whole prompt. A retained prefix may move to a slower tier, never out of the
    cache, until then; retention is capped per namespace."""

    ttl: Annotated[float, Meta(gt=0, le=MAX_RETENTION_S)]
    tokens: Annotated[int, Meta(ge=1)] | None = None
    message: Annotated[int, Meta(ge=0)] | None = None


class Generate(Message, tag="generate"):
    """Exactly one of ``prompt`` (text), ``input_ids`` and ``messages`` (a chat, to which the
    model's chat template is applied with the assistant's turn opened)."""

    id: Id
    prompt: str | None = None
    input_ids: list[TokenId] | None = None
    messages: list[ChatMessage] | None = None
    params: Sampling = field(default_factory=Sampling)  # type: ignore[valid-type]
    namespace: Namespace = None
    stream: bool = False
    prompt_logprobs_from: Annotated[int, Meta(ge=1)] | None = None
    pin: bool = False  # keep its tokens cached on its worker, once it finished, until ``Unpin(id)``
    score_next: list[TokenId] | None = None  # tokens whose logprob right after the prompt is asked for
    tenant: Namespace = None
    """Whose in-flight limit and fair share this request counts against: named by an admin client
    (the HTTP front end names its API key's); any other client is a tenant of its own."""
    retain: Annotated[list[Retain], Meta(max_length=MAX_RETAINS)] = []
    route_key: Annotated[str, Meta(max_length=256)] | None = None
    """Requests with the same key (within a namespace) go to the same worker while it lives
    (OpenAI's ``prompt_cache_key``)."""


class Abort(Message, tag="abort"):
    id: Id


class Unpin(Message, tag="unpin"):
    """Release the pin of the finished request ``id`` (also released when the client leaves)."""

    id: Id


class GetStats(Message, tag="get_stats"):
    """The router's and every worker's figures; with ``prefixes``, also the most reused cached
    prefixes of ``namespace`` (a client's own, unless it is an admin), or of every namespace when
    an admin asks for ``all_namespaces``."""

    prefixes: bool = False
    namespace: Namespace = None
    all_namespaces: bool = False


class GetHealth(Message, tag="get_health"):
    pass


class FlushCache(Message, tag="flush_cache"):
    """Drop every worker's prefix cache (a worker refuses while it runs requests or holds pins)."""


class GetTokenizer(Message, tag="get_tokenizer"):
    """Ask for the served model's tokenizer files (a frontend that tokenizes on its side needs them)."""


# ---- router -> client ----------------------------------------------------------------------


class Welcome(Message, tag="welcome"):
    version: int
    model: str
    workers: int
    max_inflight: int


def _output_struct(
    name: str,
    source: type,
    *,
    tag: str | None = None,
    keep: tuple[str, ...] | None = None,
    drop: tuple[str, ...] = (),
    types: dict[str, Any] | None = None,
    extra: tuple[tuple[str, Any, Any], ...] = (),
) -> type[Struct]:
    """A wire struct with ``source``'s fields (a dataclass of ``radixrt.outputs``): the same names,
    types and defaults, ``request_id`` called ``id``. One definition of the outputs, so a field
    added there reaches the wire without a copy here."""
    hints, types = typing.get_type_hints(source), types or {}
    fields = []
    for f in dataclasses.fields(source):
        if f.name in drop or (keep is not None and f.name not in keep and f.name != "request_id"):
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else msgspec.NODEFAULT
        )
        fields.append(("id" if f.name == "request_id" else f.name, types.get(f.name, hints[f.name]), default))
    fields += extra
    return msgspec.defstruct(
        name,
        fields,
        bases=(Message,) if tag else (),
        tag=tag,
        forbid_unknown_fields=True,
        omit_defaults=True,
        module=__name__,
    )


def to_wire(struct: type[Struct], output: Any, **changes: Any) -> Struct:
    """``output`` (a ``RequestOutput`` or ``GenerateOutput``) as the wire ``struct``."""
    names = [n for n in struct.__struct_fields__ if n not in changes]
    return struct(**{n: getattr(output, "request_id" if n == "id" else n) for n in names}, **changes)


def from_wire(cls: type, msg: Struct, **changes: Any) -> Any:
    """The wire ``msg`` as a ``cls`` of ``radixrt.outputs`` (fields the message lacks keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)} - changes.keys()
    values = {("request_id" if n == "id" else n): getattr(msg, n) for n in type(msg).__struct_fields__}
    return cls(**{n: v for n, v in values.items() if n in names}, **changes)


Delta = _output_struct(
    "Delta", RequestOutput, keep=("text", "token_ids", "logprobs", "top_logprobs", "prompt_tokens", "cached_tokens")
)
"""A streamed request's news in one step (token times come with ``Finished``)."""


class Deltas(Message, tag="deltas"):
    """New text of streamed requests: one message per client per worker step."""

    items: list[Delta]


Finished = _output_struct(
    "Finished", GenerateOutput, tag="finished", drop=("arrival", "finished"), extra=(("worker", str, ""),)
)
"""A request's whole output (``GenerateOutput``'s fields but ``arrival``); ``token_times`` are Unix
times; ``worker`` names the worker that ran it last."""


class Error(Message, tag="error"):
    """A refused message (``id`` names the request when there is one)."""

    code: str
    message: str
    id: str | None = None


class Stats(Message, tag="stats"):
    router: dict[str, Any]
    workers: dict[str, dict[str, Any]]


class CacheFlushed(Message, tag="cache_flushed"):
    ok: bool  # every worker flushed (and there was one)
    workers: dict[str, bool]


class TokenizerFiles(Message, tag="tokenizer_files"):
    """The tokenizer as ``save_pretrained`` writes it: file name -> contents."""

    files: dict[str, bytes]


class Health(Message, tag="health"):
    """Whether a worker serves; the workers' names and the requests in flight for admins only."""

    ok: bool
    workers: list[str] | None = None
    inflight: int | None = None


# ---- router <-> worker ---------------------------------------------------------------------


WorkerName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Count = Annotated[int, Meta(ge=1, le=2**31 - 1)]


class Register(Message, tag="register"):
    """A worker joins; it sends it from the identity ``worker``, and its heartbeats from
    ``worker/heartbeat``."""

    version: int
    worker: WorkerName
    pid: Annotated[int, Meta(ge=0, le=2**31 - 1)]
    model: Annotated[str, Meta(max_length=256)]
    vocab_size: Count
    max_context: Count
    page_size: Annotated[int, Meta(ge=1, le=4096)]
    num_pages: Count


class Submit(Message, tag="submit"):
    id: str
    input_ids: list[int]
    params: Sampling  # type: ignore[valid-type]  # stop strings are the router's: always empty here
    namespace: str | None = None
    prompt_logprobs_from: int | None = None
    resumed: int = 0  # the last ``resumed`` input ids are the request's output so far (a moved request)
    pin: bool = False
    score_next: list[int] = []
    tenant: str | None = None
    retain: list[tuple[int, float]] = []  # (prefix tokens, ttl seconds): resolved by the router


class Release(Message, tag="release"):
    """Unpin these finished requests."""

    ids: list[str]


class Cancel(Message, tag="cancel"):
    ids: list[str]


class StatsQuery(Message, tag="stats_query"):
    """Ask for the worker's figures; with ``prefixes``, its most reused cached prefixes of
    ``namespaces`` (every namespace when None)."""

    query: int
    prefixes: bool = False
    namespaces: list[str | None] | None = None


class Flush(Message, tag="flush"):
    """Flush the cache and answer with ``WorkerStats(query, {"flushed": bool})``."""

    query: int


class Shutdown(Message, tag="shutdown"):
    pass


TokenOutput = _output_struct(
    "TokenOutput", RequestOutput, drop=("text", "text_token_count"), types={"matched_stop": int | None}
)
"""One request's news in one step (the engine's ``RequestOutput`` less its text: text and stop
strings are the router's); ``token_times`` are Unix times."""


class WireCacheEvent(Struct, array_like=True):
    """``radixrt.cache.CacheEvent``: tokens as raw little-endian int32 bytes; ``tier`` (of a stored
    event) is where the pages from ``start`` on are now: 0 device, 1 host, 2 disk."""

    stored: bool
    namespace: str | None
    tokens: bytes
    start: int
    tier: int = 0


class StepOutput(Message, tag="step"):
    """Everything one engine step produced: every request's news and the cache's changes."""

    outputs: list[TokenOutput]
    events: list[WireCacheEvent] = []


class Prefix(Struct, forbid_unknown_fields=True):
    """One of a worker's most reused cached prefixes (``radixrt.cache.top_prefixes``)."""

    tokens: list[TokenId]
    length: Annotated[int, Meta(ge=0)]
    hits: Annotated[int, Meta(ge=0)]
    namespace: str | None = None
    text: str | None = None  # its first tokens as text, filled in by the router


class WorkerStats(Message, tag="worker_stats"):
    """A worker's figures (numbers by name: the router sums what it knows and passes the rest on)."""

    query: int
    stats: dict[str, int | float | bool | str | None]
    prefixes: list[Prefix] = []


class Heartbeat(Message, tag="heartbeat"):
    worker: WorkerName


ClientMessage = Hello | Generate | Abort | Unpin | GetStats | GetHealth | GetTokenizer | FlushCache
ReplyMessage = Welcome | Deltas | Finished | Error | Stats | Health | TokenizerFiles | CacheFlushed
ToWorker = Submit | Cancel | Release | StatsQuery | Flush | Shutdown
FromWorker = Register | StepOutput | WorkerStats | Heartbeat

encode = msgspec.msgpack.Encoder().encode


def decoder(union: Any) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(union)


def key_id(secret: str | bytes) -> str:
    """A tenant's name for a key (an API key, a client's public key): ``key-`` and 16 hex digits of
    its SHA-256, stable, short, and no use to anyone who reads it."""
    data = secret.encode() if isinstance(secret, str) else secret
    return "key-" + hashlib.sha256(data).hexdigest()[:16]


def request_id_of(frame: bytes) -> str | None:
    """The ``id`` of a frame that failed validation, if it has a usable one, so the error names its request."""
    try:
        obj = msgspec.msgpack.decode(frame)
    except Exception:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 256 else None
