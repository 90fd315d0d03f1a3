"""Servers for the server tests: ``radixrt serve`` as a real process tree on loopback, stopped (and
checked for leftover processes) even when a test fails."""

from __future__ import annotations

import pytest

from radixrt.server.launch import ServerProcess
from testkit.servers import start_server


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
