"""The runs of one HTTP request (its prompts times ``n``), read together.

One request must not hold more of the server than it can use: when one run is refused or fails
(its tenant is at its in-flight limit, say), every other run is cancelled at once, and so is every
run when the HTTP client goes away or the reader stops early. Cancelling a run closes its stream,
which aborts its request on the router. The queue between the runs and their reader is bounded, so
a reader that stops (an SSE client that no longer reads) stops the runs' readers too; the
``AsyncClient`` then aborts a run that falls too far behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from radixrt.http.schemas import ApiError
from radixrt.outputs import RequestOutput

QUEUE_SIZE = 16
T = TypeVar("T")


async def merged(
    streams: list[AsyncIterator[RequestOutput]], stop: Callable[[], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Every run's outputs as they come, with the run's index, until every run ended. The first
    error of a run (an ``ApiError`` when the router refused it) is raised, and so is a 499 when
    ``stop()`` returns; either way, as when the caller stops reading, every run still going is
    cancelled."""
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue(QUEUE_SIZE)

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        async with contextlib.aclosing(stream):
            try:
                async for out in stream:
                    await queue.put((index, out))
            except Exception as e:
                await queue.put((index, e))
                return
        await queue.put((index, None))

    async def watch(stop: Callable[[], Awaitable[None]]) -> None:
        await stop()
        await queue.put((-1, ApiError(499, "the client closed the connection", code="client_closed")))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    if stop is not None:
        tasks.append(asyncio.create_task(watch(stop)))
    left = len(streams)
    try:
        while left:
            index, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def collect(runs: AsyncIterator[tuple[int, RequestOutput]], count: int) -> list[list[RequestOutput]]:
    """Each of ``count`` runs' outputs, in order."""
    results: list[list[RequestOutput]] = [[] for _ in range(count)]
    async with contextlib.aclosing(runs):
        async for index, out in runs:
            results[index].append(out)
    return results


async def prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """``first``, then ``rest`` (closed with this iterator)."""
    async with contextlib.aclosing(rest):
        yield first
        async for item in rest:
            yield item


async def departed(request: Request) -> None:
    """Return when the client of ``request`` (whose body has been read) closes its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
