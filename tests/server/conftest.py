"""Servers for the server tests: ``radixrt serve`` as a real process tree on loopback, stopped (and
checked for leftover processes) even when a test fails."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from radixrt.server.launch import ServerProcess, pid_alive  # noqa: F401  (the tests use pid_alive)


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


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """``serve(*args)`` starts a server that is stopped at the end of the module."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        served = start_server(list(args), tmp_path_factory.mktemp("serve") / "serve.log")
        started.append(served)
        return served

    yield start
    problems = []
    for served in started:
        try:
            served.stop()
        except RuntimeError as e:
            problems.append(str(e))
    assert not problems, problems
