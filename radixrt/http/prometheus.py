"""Prometheus metric families (``/metrics`` of the HTTP API) from a ``stats`` reply: the router's and
the workers' counters, and the router's latency histograms, turned into families on each scrape."""

from __future__ import annotations

from typing import Any

WORKER_GAUGES = {  # engine stats key -> (metric name, help)
    "pages_free": ("radixrt_pages_free", "KV pages free"),
    "pages_cached": ("radixrt_pages_cached", "KV pages holding cached prefixes"),
    "pages_total": ("radixrt_pages_total", "KV pages in the pool"),
    "pages_locked": ("radixrt_pages_locked", "cached pages held by running requests and pins"),
    "running": ("radixrt_running_requests", "requests running"),
    "waiting": ("radixrt_queue_depth", "requests waiting to be scheduled"),
    "pins": ("radixrt_pins", "prefixes pinned by programs"),
    "hit_rate": ("radixrt_worker_hit_rate", "prompt tokens served from the cache / prompt tokens"),
    "pages_host": ("radixrt_host_pages_cached", "host tier: pages holding cached prefixes"),
    "pages_host_total": ("radixrt_host_pages_total", "host tier: pages it holds at most"),
    "pages_disk": ("radixrt_disk_pages_cached", "disk tier: pages holding cached prefixes"),
    "pages_disk_total": ("radixrt_disk_pages_total", "disk tier: pages it holds at most"),
}
WORKER_COUNTERS = {
    "prompt_tokens": ("radixrt_worker_prompt_tokens", "prompt tokens"),
    "cached_tokens": ("radixrt_worker_cached_tokens", "prompt tokens served from the cache"),
    "computed_tokens": ("radixrt_worker_computed_tokens", "prompt tokens computed"),
    "decode_tokens": ("radixrt_worker_decode_tokens", "tokens decoded"),
    "evicted_pages": ("radixrt_evicted_pages", "KV pages evicted from the cache"),
    "retractions": ("radixrt_retractions", "running requests retracted for memory"),
    "host_hit_tokens": ("radixrt_host_hit_tokens", "prompt tokens loaded back from the host tier"),
    "disk_hit_tokens": ("radixrt_disk_hit_tokens", "prompt tokens loaded back from the disk tier"),
    "host_stores": ("radixrt_host_stores", "pages the device evicted into the host tier"),
    "disk_writes": ("radixrt_disk_writes", "pages queued for the disk tier"),
    "disk_writes_refused": ("radixrt_disk_writes_refused", "pages the disk tier did not take (full or failing)"),
    "disk_write_errors": ("radixrt_disk_write_errors", "disk tier page writes that failed"),
    "disk_load_failures": ("radixrt_disk_load_failures", "disk tier pages found missing or corrupt, recomputed"),
}


def metric_families(stats: dict[str, Any]) -> list[Any]:
    """Prometheus metric families for a ``stats`` reply (``{"router": ..., "workers": ...}``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    router, workers = stats["router"], stats["workers"]
    families: list[Any] = []
    outcomes = CounterMetricFamily("radixrt_requests", "requests by outcome", labels=["outcome"])
    for outcome in ("finished", "aborted", "failed", "refused"):
        outcomes.add_metric([outcome], router.get(outcome, 0))
    families.append(outcomes)
    for key, help_ in (
        ("prompt_tokens", "prompt tokens"),
        ("cached_tokens", "prompt tokens served from the cache"),
        ("computed_tokens", "prompt tokens computed"),
        ("output_tokens", "tokens generated"),
    ):
        families.append(CounterMetricFamily(f"radixrt_{key}", help_, value=router.get(key, 0)))
    families.append(
        GaugeMetricFamily(
            "radixrt_hit_rate", "prompt tokens served from the cache / prompt tokens", value=router.get("hit_rate", 0.0)
        )
    )
    families.append(
        GaugeMetricFamily("radixrt_inflight_requests", "requests in flight", value=router.get("inflight", 0))
    )
    families.append(GaugeMetricFamily("radixrt_workers", "workers connected", value=len(workers)))
    for kind, table in ((GaugeMetricFamily, WORKER_GAUGES), (CounterMetricFamily, WORKER_COUNTERS)):
        for key, (name, help_) in table.items():
            family = kind(name, help_, labels=["worker"])
            for worker, s in sorted(workers.items()):
                family.add_metric([worker], s.get(key, 0))
            families.append(family)
    for key, (name, help_) in {
        "ttft": ("radixrt_time_to_first_token_seconds", "time to first token"),
        "itl": ("radixrt_inter_token_latency_seconds", "time between tokens"),
        "e2e": ("radixrt_e2e_latency_seconds", "request latency, arrival to end"),
    }.items():
        h = router.get("latency", {}).get(key)
        if h is None:
            continue
        cumulative, buckets = 0, []
        for bound, count in zip([*h["bounds"], float("inf")], h["counts"]):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        families.append(HistogramMetricFamily(name, help_, buckets=buckets, sum_value=h["sum"]))
    return families
