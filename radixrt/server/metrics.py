"""Latency histograms the router fills as requests end: plain bucket counts (no Prometheus library
in the router's loop), sent in its ``stats`` replies. ``radixrt.http.prometheus`` renders them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


@dataclass
class Histogram:
    """Cumulative-at-render bucket counts, as Prometheus histograms are."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


@dataclass
class Latencies:
    """Time to first token, inter-token latency and end-to-end latency of finished requests."""

    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)
    e2e: Histogram = field(default_factory=Histogram)

    def observe(self, arrival: float, token_times: list[float], ended: float) -> None:
        if token_times:
            self.ttft.observe(token_times[0] - arrival)
            for a, b in zip(token_times, token_times[1:]):
                self.itl.observe(b - a)
        self.e2e.observe(ended - arrival)

    def to_dict(self) -> dict[str, Any]:
        return {"ttft": self.ttft.to_dict(), "itl": self.itl.to_dict(), "e2e": self.e2e.to_dict()}
