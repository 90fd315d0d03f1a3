"""The OpenAI-compatible HTTP front end: a Starlette app, served by uvicorn on a thread beside the
router, that is one more client of the router (the asyncio ZeroMQ client): ``/v1/completions``,
``/v1/chat/completions`` (server-sent events when streaming), ``/v1/models`` and ``/health``.

Bodies are validated with msgspec (unknown fields are refused, as the wire protocol does); every
error has OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and status. With
API keys, a request needs ``Authorization: Bearer KEY``; each key (or each ``user``, as
configured) is a cache namespace of its own, so tenants never share prefixes.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from radixrt.client import AsyncClient, ServerError, load_tokenizer
from radixrt.outputs import RequestOutput
from radixrt.params import SamplingParams
from radixrt.http.prometheus import metric_families

log = logging.getLogger("radixrt.http")

MAX_BODY_BYTES = 8 << 20
CACHE_PAGE = Path(__file__).with_name("cache_page.html")
CHAT_MAX_TOKENS = 4096  # when a chat request sets no limit: clipped by the engine to what fits


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    json_schema: dict[str, Any] | None = None


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
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False  # an extension (as vLLM and SGLang have): generate max_tokens whatever comes


class CompletionBody(Common):
    prompt: Any = None  # text, token ids, or a list of either
    logprobs: int | None = None  # each chosen token's logprob, and this many most likely tokens' (0..20)


class ChatBody(Common):
    messages: list[dict[str, Any]] = []
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error", 503: "service_unavailable"}.get(self.status, "server_error")
        return JSONResponse({"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status)


_SERVER_STATUS = {"invalid_request": 400, "bad_message": 400, "duplicate_id": 400, "too_many_requests": 429,
                  "unavailable": 503, "connection_lost": 503}


@dataclass
class HttpConfig:
    address: str  # the router's client address
    api_keys: tuple[str, ...] = ()
    namespace_by: str = "key"  # "key", "user" or "none": what separates tenants' cached prefixes
    keys_dir: str | None = None  # CURVE keys to reach the router, when it needs them
    max_body_bytes: int = MAX_BODY_BYTES


@dataclass
class Frontend:
    config: HttpConfig
    client: AsyncClient | None = None
    model: str = ""
    tokenizer: Any = None  # loaded from the router on the first request that asks for logprobs
    created: int = field(default_factory=lambda: int(time.time()))

    async def connect(self) -> AsyncClient:
        if self.client is None:
            self.client = AsyncClient(self.config.address, keys=self.config.keys_dir)
            await self.client.health()
            self.model = self.client.info.model
        return self.client

    # ---- requests ------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body = await self._body(request, CompletionBody)
        prompts = _prompts(body.prompt)
        params = self._params(body, body.max_tokens if body.max_tokens is not None else 16, body.logprobs is not None,
                              top_logprobs=body.logprobs or 0)
        return await self._respond(request, body, prompts, params, chat=False)

    async def chat(self, request: Request) -> Response:
        body = await self._body(request, ChatBody)
        if not body.messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        messages = [_message(m, i) for i, m in enumerate(body.messages)]
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = self._params(body, CHAT_MAX_TOKENS if limit is None else limit, body.logprobs,
                              _json_schema(body.response_format), body.top_logprobs or 0)
        return await self._respond(request, body, [messages], params, chat=True)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        await self.connect()
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "created": self.created,
                                                          "owned_by": "radixrt"}]})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self._authorize(request)
        families = metric_families(await (await self.connect()).stats())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def page(self, request: Request) -> Response:
        """The live cache page (it reads ``stats.json``, with the ``?key=`` it was opened with)."""
        return HTMLResponse(CACHE_PAGE.read_text())

    async def stats(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(await (await self.connect()).stats(prefixes=True))

    async def health(self, request: Request) -> Response:
        client = await self.connect()
        health = await client.health()
        return JSONResponse(health, status_code=200 if health["ok"] else 503)

    # ---- the parts ---------------------------------------------------------------------------

    async def _body(self, request: Request, kind: type) -> Any:
        self._authorize(request)
        raw = await request.body()
        if len(raw) > self.config.max_body_bytes:
            raise ApiError(413, f"the request body has {len(raw)} bytes, more than the {self.config.max_body_bytes} allowed")
        try:
            body = msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as e:
            text = str(e)
            where = text.rsplit(" - at `$.", 1)
            param = where[1].rstrip("`").split("[")[0].split(".")[0] if len(where) == 2 else None
            raise ApiError(400, text, param) from None
        except msgspec.DecodeError as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        await self.connect()
        if body.model is not None and body.model not in (self.model, "default"):
            raise ApiError(404, f"the model {body.model!r} does not exist: this server serves {self.model!r}", "model",
                           "model_not_found")
        if not 1 <= body.n <= 16:
            raise ApiError(400, f"n must be in 1..16, got {body.n}", "n")
        return body

    def _authorize(self, request: Request) -> None:
        keys = self.config.api_keys
        if not keys:
            return
        given = request.headers.get("authorization", "")
        if request.query_params.get("key") in keys:  # the cache page, opened as /?key=KEY
            return
        if not given.startswith("Bearer ") or given[7:] not in keys:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key")

    def _namespace(self, request: Request, body: Common) -> str | None:
        if self.config.namespace_by == "user":
            return body.user
        if self.config.namespace_by == "key" and self.config.api_keys:
            key = request.headers.get("authorization", "")[7:]
            return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        return None

    @staticmethod
    def _params(body: Common, max_tokens: int, logprobs: bool, json_schema: str | None = None,
                top_logprobs: int = 0) -> SamplingParams:
        stop = body.stop if body.stop is None or isinstance(body.stop, str) else tuple(body.stop)
        params = SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop,
                                seed=body.seed, logprobs=logprobs, top_logprobs=top_logprobs,
                                frequency_penalty=body.frequency_penalty,
                                presence_penalty=body.presence_penalty, json_schema=json_schema, ignore_eos=body.ignore_eos)
        try:
            params.validate(1 << 31)
        except ValueError as e:
            raise ApiError(400, str(e).replace("max_new_tokens", "max_tokens")) from None
        return params

    async def _respond(self, request: Request, body: Common, prompts: list[Any], params: SamplingParams, chat: bool) -> Response:
        namespace = self._namespace(request, body)
        runs = [(p, i, _seeded(params, body.seed, i)) for p in prompts for i in range(body.n)]
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if params.logprobs and self.tokenizer is None:
            self.tokenizer = await asyncio.to_thread(load_tokenizer, await (await self.connect()).tokenizer_files())
        reply = _Reply(rid, self.model, chat, body.stream_options is not None and body.stream_options.include_usage,
                       self.tokenizer)
        streams = [self._outputs(prompt, p, namespace) for prompt, _, p in runs]
        if body.stream:
            return StreamingResponse(reply.events(streams), media_type="text/event-stream")
        results = await asyncio.gather(*(_collect(s) for s in streams))
        return JSONResponse(reply.whole(results))

    async def _outputs(self, prompt: Any, params: SamplingParams, namespace: str | None) -> AsyncIterator[RequestOutput]:
        client = await self.connect()
        try:
            async for out in client.outputs(prompt, params, namespace=namespace):
                if out.error is not None and out.finished and not out.token_ids:
                    raise ApiError(500, f"the request failed: {out.error}")
                yield out
        except ServerError as e:
            raise ApiError(_SERVER_STATUS.get(e.code, 500), str(e).split(": ", 1)[-1], code=e.code) from None


@dataclass
class _Reply:
    """OpenAI's response objects, whole or as stream chunks."""

    id: str
    model: str
    chat: bool
    include_usage: bool
    tokenizer: Any = None
    created: int = field(default_factory=lambda: int(time.time()))

    def token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else str(token_id)

    def logprobs(self, outs: list[RequestOutput]) -> dict[str, Any] | None:
        """OpenAI's logprobs object for these outputs' tokens (None when not asked for)."""
        logprobs = [lp for o in outs for lp in (o.logprobs or [])]
        if not logprobs:
            return None
        ids = [t for o in outs for t in o.token_ids]
        tops = [top for o in outs for top in (o.top_logprobs or [])] or [[] for _ in ids]
        tokens = [self.token(t) for t in ids]
        if self.chat:
            return {"content": [{"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                                 "top_logprobs": [{"token": self.token(t), "logprob": v, "bytes": list(self.token(t).encode())}
                                                  for t, v in top]}
                                for tok, lp, top in zip(tokens, logprobs, tops)]}
        return {"tokens": tokens, "token_logprobs": logprobs, "text_offset": None,
                "top_logprobs": [{self.token(t): v for t, v in top} for top in tops] if any(tops) else None}

    def whole(self, results: list[list[RequestOutput]]) -> dict[str, Any]:
        choices = []
        for index, outs in enumerate(results):
            text = "".join(o.text for o in outs)
            last = outs[-1]
            choice: dict[str, Any] = {"index": index, "finish_reason": _finish(last)}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice["logprobs"] = self.logprobs(outs)
            choices.append(choice)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": _usage(results)}

    async def events(self, streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
            try:
                async for out in stream:
                    await queue.put((index, out))
            except ApiError as e:
                await queue.put((index, e))
            finally:
                await queue.put((index, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        results: list[list[RequestOutput]] = [[] for _ in streams]
        left = len(streams)
        try:
            if self.chat:
                for i in range(len(streams)):
                    yield self._event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            while left:
                index, item = await queue.get()
                if item is None:
                    left -= 1
                    continue
                if isinstance(item, ApiError):
                    yield b"data: " + json.dumps({"error": {"message": str(item), "code": item.code}}).encode() + b"\n\n"
                    continue
                results[index].append(item)
                finish = _finish(item) if item.finished else None
                if item.text or finish or item.logprobs:
                    delta = {"delta": {"content": item.text}} if self.chat else {"text": item.text}
                    yield self._event([{"index": index, **delta, "logprobs": self.logprobs([item]), "finish_reason": finish}])
            if self.include_usage:
                yield self._event([], usage=_usage([r for r in results if r]))
            yield b"data: [DONE]\n\n"
        finally:  # the client went away mid-stream: stop the requests (their pages come back)
            for task in tasks:
                task.cancel()

    def _event(self, choices: list[dict], usage: dict | None = None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _finish(out: RequestOutput) -> str:
    return "length" if out.finish_reason == "length" else "stop"


def _usage(results: list[list[RequestOutput]]) -> dict[str, Any]:
    prompts: dict[int, tuple[int, int]] = {}
    completion = 0
    for i, outs in enumerate(results):
        last = outs[-1]
        prompts[i] = (last.prompt_tokens, last.cached_tokens)
        completion += sum(len(o.token_ids) for o in outs)
    prompt = sum(p for p, _ in prompts.values())
    cached = sum(c for _, c in prompts.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _seeded(params: SamplingParams, seed: int | None, index: int) -> SamplingParams:
    """The ``index``-th of ``n`` samples: its own seed, so that they differ and repeat."""
    return params if seed is None or index == 0 else replace(params, seed=seed + index)


async def _collect(stream: AsyncIterator[RequestOutput]) -> list[RequestOutput]:
    return [out async for out in stream]


def _prompts(prompt: Any) -> list[Any]:
    """Completions take text, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt) or all(
                isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt):
            return list(prompt)
    raise ApiError(400, "prompt must be a string, a list of token ids, or a non-empty list of either", "prompt")


def _message(message: dict[str, Any], index: int) -> dict[str, str]:
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or set(message) - {"role", "content", "name"}:
        raise ApiError(400, f"messages[{index}] must have a role and a content (and nothing else but a name)", "messages")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts", "messages")
    return {"role": role, "content": content}


def _json_schema(fmt: ResponseFormat | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    if fmt.type == "json_schema" and fmt.json_schema is not None and isinstance(fmt.json_schema.get("schema"), dict):
        return json.dumps(fmt.json_schema["schema"])
    raise ApiError(400, "response_format is {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", "
                        "\"json_schema\": {\"name\": ..., \"schema\": {...}}}", "response_format")


@dataclass(eq=False)
class _Snapshot:
    """A Prometheus collector that yields one scrape's metric families."""

    families: list[Any]

    def collect(self) -> list[Any]:
        return self.families


def make_app(config: HttpConfig) -> Starlette:
    frontend = Frontend(config)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return e.response()
            except ServerError as e:
                return ApiError(_SERVER_STATUS.get(e.code, 500), str(e), code=e.code).response()
            except (ConnectionError, TimeoutError) as e:
                return ApiError(503, f"the server's router does not answer: {e}").response()
            except Exception as e:  # a bug: the client hears of it in OpenAI's shape, the server goes on
                log.exception("error while handling %s %s", request.method, request.url.path)
                return ApiError(500, f"internal error: {type(e).__name__}: {e}").response()
        return endpoint

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").response()

    routes = [Route("/v1/completions", guarded(frontend.completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(frontend.chat), methods=["POST"]),
              Route("/v1/models", guarded(frontend.models), methods=["GET"]),
              Route("/health", guarded(frontend.health), methods=["GET"]),
              Route("/metrics", guarded(frontend.metrics), methods=["GET"]),
              Route("/", guarded(frontend.page), methods=["GET"]),
              Route("/stats.json", guarded(frontend.stats), methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


class HttpServer:
    """uvicorn serving ``make_app(config)`` on a thread of its own; ``stop()`` ends it."""

    def __init__(self, config: HttpConfig, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(make_app(config), host=host, port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="radixrt-http")

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; the bound port."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the HTTP server did not start (is the port free?)")
            time.sleep(0.02)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
