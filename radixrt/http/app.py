"""The OpenAI-compatible HTTP front end: a Starlette app, served by uvicorn on a thread beside the
router, that is one more client of the router (the asyncio ZeroMQ client, an admin client: it names
each request's tenant and namespace): ``/v1/completions``, ``/v1/chat/completions`` (server-sent
events when streaming), ``/v1/models``, ``/health``, ``/metrics``, and the live cache page (``/``
over ``/stats.json``).

Bodies and errors are ``radixrt.http.schemas``'s, response objects ``radixrt.http.replies``'s, who
a request comes from ``radixrt.http.access``'s. With API keys, a request needs one; each key is a
tenant of its own (its own in-flight limit and fair share) and (or each ``user``, as configured) a
cache namespace of its own, so tenants never share prefixes nor see each other's.

What one request may hold is bounded: its body (``max_body_bytes``, refused as soon as it is
exceeded), its runs (``MAX_RUNS_PER_REQUEST``, cancelled together when one fails or the client
leaves), and the replies waiting for a reader that stopped (``AsyncClient``'s ``max_unread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from radixrt.client import AsyncClient, ServerError, load_tokenizer
from radixrt.client.core import MAX_UNREAD
from radixrt.http.access import Access
from radixrt.http.prometheus import metric_families
from radixrt.http.replies import Reply
from radixrt.http.runs import collect, departed, merged, prepend
from radixrt.http.schemas import ApiError, Body, ChatBody, CompletionBody, parse
from radixrt.outputs import RequestOutput
from radixrt.params import SamplingParams
from radixrt.wire.sockets import Keys

log = logging.getLogger("radixrt.http")

MAX_BODY_BYTES = 8 << 20
MAX_RUNS_PER_REQUEST = 64
"""Prompts times ``n`` of one request: more would let one request take a tenant's whole share."""
MAX_CONNECTIONS = 1024
"""Connections (and requests) served at once; beyond, uvicorn answers 503 at once."""
MAX_HEADER_BYTES = 16 << 10
KEEP_ALIVE_SECONDS = 5
CACHE_PAGE = Path(__file__).with_name("cache_page.html")


@dataclass
class HttpConfig:
    address: str  # the router's client address
    api_keys: tuple[str, ...] = ()
    namespace_by: str = "key"  # "key", "user" or "none": what separates tenants' cached prefixes
    keys: Keys | None = None
    """CURVE keys to reach the router, when it needs them: an admin pair (``Keys.load(DIR,
    pair="admin")``), since the front end names each request's tenant and namespace."""
    admin_key: str | None = None  # shows every tenant's prefixes, /health's details and /metrics
    max_body_bytes: int = MAX_BODY_BYTES
    max_connections: int = MAX_CONNECTIONS
    max_unread: int = MAX_UNREAD  # replies of one run waiting for a reader that stopped, before it is aborted
    tokenizer: Any = None
    """The router's tokenizer, when the front end runs in its process: it renders logprobs' tokens (a
    read-only use beside the router's). Without one, the router's files are fetched and loaded once."""


@dataclass
class Frontend:
    config: HttpConfig
    client: AsyncClient | None = None
    model: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer: Any = field(init=False)
    access: Access = field(init=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.config.tokenizer
        self.access = Access(self.config.api_keys, self.config.admin_key, self.config.namespace_by)

    async def connect(self) -> AsyncClient:
        if self.client is None:
            self.client = AsyncClient(self.config.address, keys=self.config.keys, max_unread=self.config.max_unread)
            await self.client.health()
            self.model = self.client.info.model
        return self.client

    async def close(self) -> None:
        """Close the client: a ZeroMQ context left open blocks the interpreter's exit."""
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    # ---- the endpoints ---------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, CompletionBody)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, ChatBody)

    async def models(self, request: Request) -> Response:
        self.access.authorize(request)
        await self.connect()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": self.created, "owned_by": "radixrt"}],
            }
        )

    async def metrics(self, request: Request) -> Response:
        """Server-wide figures (no prompt text, but the workers' names and every tenant's load): the
        admin key's when there is one, else any API key's."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.access.authorize(request)
        if self.config.admin_key is not None:
            self.access.require_admin(request, "/metrics")
        families = metric_families(await (await self.connect()).stats())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def page(self, request: Request) -> Response:
        """The live cache page (it reads ``stats.json``, with the ``?key=`` it was opened with)."""
        return HTMLResponse(CACHE_PAGE.read_text())

    async def stats(self, request: Request) -> Response:
        """The figures and the most reused prefixes of the caller's namespace (with ``--namespace-by
        user``, ``?user=``'s); of every namespace for the admin key."""
        key = self.access.authorize(request)
        client = await self.connect()
        if self.access.is_admin(request):
            return JSONResponse(await client.stats(prefixes=True, all_namespaces=True))
        namespace = self.access.namespace(key, request.query_params.get("user"))
        return JSONResponse(await client.stats(prefixes=True, namespace=namespace))

    async def health(self, request: Request) -> Response:
        """Whether a worker serves, for anyone (load balancers ask without a key); which workers,
        and how many requests are in flight, for the admin key only."""
        health = await (await self.connect()).health()
        body = health if self.access.is_admin(request) else {"ok": health["ok"]}
        return JSONResponse(body, status_code=200 if health["ok"] else 503)

    # ---- the parts -------------------------------------------------------------------------

    async def _body(self, request: Request, kind: type[Body]) -> Body:
        body = parse(await self._read_body(request), kind)
        await self.connect()
        if body.model is not None and body.model not in (self.model, "default"):
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist: this server serves {self.model!r}",
                "model",
                "model_not_found",
            )
        return body

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with a 413 as soon as it is known to be too large: by its
        Content-Length before any of it is read, else as it arrives (a chunked body)."""
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body has {int(length)} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body has more than the {limit} bytes allowed")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            files = await (await self.connect()).tokenizer_files()
            self.tokenizer = await asyncio.to_thread(load_tokenizer, files)
        return self.tokenizer

    async def _generate(self, request: Request, kind: type[Body]) -> Response:
        key = self.access.authorize(request)  # before the body is read
        body = await self._body(request, kind)
        prompts, params, chat = body.prompts(), body.params(), isinstance(body, ChatBody)
        if len(prompts) * body.n > MAX_RUNS_PER_REQUEST:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n={body.n} is {len(prompts) * body.n} completions, more than "
                f"MAX_RUNS_PER_REQUEST ({MAX_RUNS_PER_REQUEST}) in one request",
                "n",
            )
        namespace, tenant = self.access.namespace(key, body.user), self.access.tenant(key)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        reply = Reply(
            rid,
            self.model,
            chat,
            body.include_usage,
            body.continuous_usage,
            await self._tokenizer() if params.logprobs else None,
        )
        streams = [
            self._outputs(prompt, _seeded(params, i), namespace, tenant, body.cache_options())
            for prompt in prompts
            for i in range(body.n)
        ]
        runs = merged(streams, partial(departed, request))
        if not body.stream:
            return JSONResponse(reply.whole(await collect(runs, len(streams))))
        try:  # the first output before the headers: a refusal is a status, not an event in a 200
            first = await anext(runs)
        except BaseException:
            await runs.aclose()
            raise
        return StreamingResponse(reply.events(prepend(first, runs), len(streams)), media_type="text/event-stream")

    async def _outputs(
        self, prompt: Any, params: SamplingParams, namespace: str | None, tenant: str | None, cache: dict[str, Any]
    ) -> AsyncIterator[RequestOutput]:
        client = await self.connect()
        try:
            async with contextlib.aclosing(
                client.outputs(prompt, params, namespace=namespace, tenant=tenant, **cache)
            ) as outputs:
                async for out in outputs:
                    if out.error is not None and out.finished and not out.token_ids:
                        status = 400 if "retention cap" in out.error else 500  # the request asked too much
                        raise ApiError(status, f"the request failed: {out.error}")
                    yield out
        except ServerError as e:
            raise ApiError.from_server(e) from None


def _seeded(params: SamplingParams, index: int) -> SamplingParams:
    """The ``index``-th of ``n`` samples: its own seed, so that they differ and repeat."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=(params.seed + index) % 2**64)  # a 64-bit seed, as torch takes it


@dataclass(eq=False)
class _Snapshot:
    """A Prometheus collector that yields one scrape's metric families."""

    families: list[Any]

    def collect(self) -> list[Any]:
        return self.families


Handler = Callable[[Request], Awaitable[Response]]


def make_app(config: HttpConfig) -> Starlette:
    frontend = Frontend(config)

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ServerError as e:
                return _error(ApiError.from_server(e))
            except ApiError as e:
                return _error(e)
            except (ConnectionError, TimeoutError) as e:
                return _error(ApiError(503, f"the server's router does not answer: {e}"))
            except Exception as e:  # a bug: the client hears of it in OpenAI's shape, the server goes on
                log.exception("error while handling %s %s", request.method, request.url.path)
                return _error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

        return endpoint

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    routes = [
        Route("/v1/completions", guarded(frontend.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(frontend.chat), methods=["POST"]),
        Route("/v1/models", guarded(frontend.models), methods=["GET"]),
        Route("/health", guarded(frontend.health), methods=["GET"]),
        Route("/metrics", guarded(frontend.metrics), methods=["GET"]),
        Route("/", guarded(frontend.page), methods=["GET"]),
        Route("/stats.json", guarded(frontend.stats), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await frontend.close()

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class HttpServer:
    """uvicorn serving ``make_app(config)`` on a thread of its own; ``stop()`` ends it."""

    def __init__(self, config: HttpConfig, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(
                make_app(config),
                host=host,
                port=port,
                log_level="warning",
                lifespan="on",
                http="h11",  # whose header limit is h11_max_incomplete_event_size
                limit_concurrency=config.max_connections,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
        )
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
