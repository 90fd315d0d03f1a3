"""Questions the router puts to every worker (``get_stats``, ``flush_cache``): answered once every
worker replied, or at the deadline with the replies that came."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from radixrt.wire import protocol as p

STATS_TIMEOUT = 2.0


@dataclass
class StatsRequest:
    """A client's question to every worker (``get_stats``, or ``flush_cache`` when ``flush``)."""

    client: bytes
    waiting: set[str]
    deadline: float
    flush: bool = False
    prefixes: bool = False
    replies: dict[str, dict] = field(default_factory=dict)


class Queries:
    def __init__(self) -> None:
        self._ids = itertools.count()
        self.open: dict[int, StatsRequest] = {}

    def ask(
        self, client: bytes, workers: Iterable[str], flush: bool, prefixes: bool, namespaces: list[str | None] | None
    ) -> tuple[int, p.Message]:
        """A new question's id and the message for every worker (``namespaces``: whose prefixes)."""
        query_id = next(self._ids)
        deadline = time.monotonic() + STATS_TIMEOUT
        self.open[query_id] = StatsRequest(client, set(workers), deadline, flush, prefixes)
        return query_id, p.Flush(query_id) if flush else p.StatsQuery(query_id, prefixes, namespaces)

    def reply(self, worker: str, msg: p.WorkerStats) -> list[StatsRequest]:
        """Take a worker's reply; the question, if that was the last reply it waited for."""
        query = self.open.get(msg.query)
        if query is None or worker not in query.waiting:
            return []
        query.replies[worker] = dict(msg.stats)
        if query.prefixes:
            query.replies[worker]["top_prefixes"] = [msgspec.structs.asdict(prefix) for prefix in msg.prefixes]
        return self.forget(worker, [msg.query])

    def forget(self, worker: str, ids: Iterable[int] | None = None) -> list[StatsRequest]:
        """Wait no longer for ``worker`` (lost, or replied); the questions it completes."""
        done = []
        for query_id in list(self.open if ids is None else ids):
            self.open[query_id].waiting.discard(worker)
            if not self.open[query_id].waiting:
                done.append(self.open.pop(query_id))
        return done

    def due(self, now: float) -> list[StatsRequest]:
        """The questions past their deadline."""
        due = [query_id for query_id, query in self.open.items() if now > query.deadline]
        return [self.open.pop(query_id) for query_id in due]


def answer(query: StatsRequest, router: dict[str, Any], tokenizer: Any) -> p.Message:
    """The reply to the client that asked: ``cache_flushed``, or ``stats`` with the router's own."""
    if tokenizer is not None:  # the cache page shows the most reused prefixes' first words
        for stats in query.replies.values():
            for prefix in stats.get("top_prefixes", []):
                prefix["text"] = tokenizer.decode(prefix["tokens"])
    if query.flush:
        flushed = {name: bool(reply.get("flushed")) for name, reply in query.replies.items()}
        return p.CacheFlushed(bool(flushed) and all(flushed.values()), flushed)
    return p.Stats(router, query.replies)
