"""The replay report's figures, drawn with matplotlib (no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radixrt.replay.replayer import ReplayResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def hit_rate_vs_capacity(rows: list[dict], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    finite = [r for r in rows if r["capacity_pages"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["capacity_pages"] for r in finite]
    ax.plot(x, [r["lru_hit_rate"] for r in finite], "o-", label="LRU (the engine's default)")
    if finite and "adaptive_hit_rate" in finite[0]:
        ax.plot(x, [r["adaptive_hit_rate"] for r in finite], "^-", label="adaptive (--eviction adaptive)")
    ax.plot(x, [r["optimal_hit_rate"] for r in finite], "s--", label="optimum (Belady, leaves only)")
    tiered = [r for r in finite if "tiered_hit_rate" in r]
    if tiered:
        xt = [r["capacity_pages"] for r in tiered]
        device = [r["tiered_hit_rate"] - r["host_hit_rate"] - r["disk_hit_rate"] for r in tiered]
        host = [r["host_hit_rate"] for r in tiered]
        disk = [r["disk_hit_rate"] for r in tiered]
        ax.stackplot(xt, device, host, disk, labels=["with tiers: from device", "from host", "from disk"], alpha=0.3)
    for r in rows:
        if r["capacity_pages"] is None:
            ax.axhline(r["optimal_hit_rate"], color="grey", lw=0.8, ls=":", label="unlimited")
    ax.set_xscale("log")
    ax.set_xlabel("device cache capacity (pages)")
    ax.set_ylabel("prompt-token hit rate")
    ax.set_ylim(0, 1)
    ax.set_title(title or "hit rate against cache capacity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_cdfs(result: ReplayResult, path: Path) -> Path:
    plt = _pyplot()
    ok = [r for r in result.records if r.skipped is None and r.error is None]
    series = {
        "time to first token": [r.time_to_first_token for r in ok if r.time_to_first_token is not None],
        "inter-token latency": [d for r in ok for d in np.diff(r.token_times)],
        "end-to-end latency": [r.finished - r.sent for r in ok],
    }
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (name, values) in zip(axes, series.items()):
        if values:
            xs = np.sort(values)
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs))
        ax.set_title(name)
        ax.set_xlabel("seconds")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("fraction of requests (tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def over_time(result: ReplayResult, path: Path) -> Path:
    """Cache occupancy (fraction of the KV pool cached) and the hit rate so far, over the replay."""
    plt = _pyplot()
    done = sorted((r for r in result.records if r.skipped is None and r.error is None), key=lambda r: r.finished)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if result.occupancy:
        t, frac = zip(*result.occupancy)
        ax.plot(t, frac, label="KV pool cached")
    if done:
        prompt = np.cumsum([r.prompt_tokens for r in done])
        cached = np.cumsum([r.cached_tokens for r in done])
        ax.plot([r.finished - result.started for r in done], cached / np.maximum(prompt, 1), label="hit rate so far")
    ax.set_xlabel("seconds into the replay")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # nothing to show when every request failed
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
