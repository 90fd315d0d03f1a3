"""The OpenAI-compatible HTTP front end: a Starlette app, served by uvicorn on a thread beside the
router, that is one more client of the router (the asyncio ZeroMQ client): ``/v1/completions``,
``/v1/chat/completions`` (server-sent events when streaming), ``/v1/models``, ``/health``,
``/metrics``, and the live cache page (``/`` over ``/stats.json``).

Bodies and errors are ``radixrt.http.schemas``'s, response objects ``radixrt.http.replies``'s. With
API keys, a request needs ``Authorization: Bearer KEY``; each key (or each ``user``, as configured)
is a cache namespace of its own, so tenants never share prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from radixrt.client import AsyncClient, ServerError, load_tokenizer
from radixrt.http.prometheus import metric_families
from radixrt.http.replies import Reply, collect
from radixrt.http.schemas import ApiError, Body, ChatBody, Common, CompletionBody, parse
from radixrt.outputs import RequestOutput
from radixrt.params import SamplingParams

log = logging.getLogger("radixrt.http")

MAX_BODY_BYTES = 8 << 20
CACHE_PAGE = Path(__file__).with_name("cache_page.html")


@dataclass
class HttpConfig:
    address: str  # the router's client address
    api_keys: tuple[str, ...] = ()
    namespace_by: str = "key"  # "key", "user" or "none": what separates tenants' cached prefixes
    keys_dir: str | None = None  # CURVE keys to reach the router, when it needs them
    max_body_bytes: int = MAX_BODY_BYTES
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

    def __post_init__(self) -> None:
        self.tokenizer = self.config.tokenizer

    async def connect(self) -> AsyncClient:
        if self.client is None:
            self.client = AsyncClient(self.config.address, keys=self.config.keys_dir)
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
        return await self._generate(request, await self._body(request, CompletionBody))

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, await self._body(request, ChatBody))

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        await self.connect()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": self.created, "owned_by": "radixrt"}],
            }
        )

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
        health = await (await self.connect()).health()
        return JSONResponse(health, status_code=200 if health["ok"] else 503)

    # ---- the parts -------------------------------------------------------------------------

    async def _body(self, request: Request, kind: type[Body]) -> Body:
        self._authorize(request)
        raw = await request.body()
        if len(raw) > self.config.max_body_bytes:
            limit = self.config.max_body_bytes
            raise ApiError(413, f"the request body has {len(raw)} bytes, more than the {limit} allowed")
        body = parse(raw, kind)
        await self.connect()
        if body.model is not None and body.model not in (self.model, "default"):
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist: this server serves {self.model!r}",
                "model",
                "model_not_found",
            )
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

    async def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            files = await (await self.connect()).tokenizer_files()
            self.tokenizer = await asyncio.to_thread(load_tokenizer, files)
        return self.tokenizer

    async def _generate(self, request: Request, body: CompletionBody | ChatBody) -> Response:
        prompts, params, chat = body.prompts(), body.params(), isinstance(body, ChatBody)
        namespace = self._namespace(request, body)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        reply = Reply(
            rid,
            self.model,
            chat,
            body.include_usage,
            body.continuous_usage,
            await self._tokenizer() if params.logprobs else None,
        )
        streams = [self._outputs(prompt, _seeded(params, i), namespace) for prompt in prompts for i in range(body.n)]
        if body.stream:
            return StreamingResponse(reply.events(streams), media_type="text/event-stream")
        return JSONResponse(reply.whole(list(await asyncio.gather(*(collect(s) for s in streams)))))

    async def _outputs(
        self, prompt: Any, params: SamplingParams, namespace: str | None
    ) -> AsyncIterator[RequestOutput]:
        client = await self.connect()
        try:
            async for out in client.outputs(prompt, params, namespace=namespace):
                if out.error is not None and out.finished and not out.token_ids:
                    raise ApiError(500, f"the request failed: {out.error}")
                yield out
        except ServerError as e:
            raise ApiError.from_server(e) from None


def _seeded(params: SamplingParams, index: int) -> SamplingParams:
    """The ``index``-th of ``n`` samples: its own seed, so that they differ and repeat."""
    return params if params.seed is None or index == 0 else replace(params, seed=params.seed + index)


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
            uvicorn.Config(make_app(config), host=host, port=port, log_level="warning", lifespan="on")
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
