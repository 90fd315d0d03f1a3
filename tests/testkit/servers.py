"""Real servers for tests: ``radixrt serve`` as a process tree on loopback, and waiting on it."""

from __future__ import annotations

import time
from pathlib import Path

from radixrt.client import Client
from radixrt.server.launch import ServerProcess, pid_alive

__all__ = ["pid_alive", "settled", "start_server", "wait_for"]


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_server(args: list[str], log: Path) -> ServerProcess:
    """A server on loopback with one torch thread per worker."""
    return ServerProcess(["--threads", "1", *args], log, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def settled(client: Client) -> bool:
    """Nothing in flight and no page lost: every worker's pages are free or cached."""
    stats = client.stats()
    workers = stats["workers"].values()
    return stats["router"]["inflight"] == 0 and all(
        w["running"] == 0 and w["waiting"] == 0 and w["pages_free"] + w["pages_cached"] == w["pages_total"]
        for w in workers
    )
