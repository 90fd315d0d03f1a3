"""Hostile but valid requests against a real server (`radixrt serve`, a tiny model): each is
refused with a clear error, the worker stays connected (the same process), and another client's
request is served meanwhile within its normal latency. Before, each of these stalled the router's
loop for seconds and made it drop its workers."""

from __future__ import annotations

import threading
import time

import pytest

from radixrt import SamplingParams
from radixrt.client import Client, InvalidRequest

SHORT = SamplingParams(max_new_tokens=4, temperature=0)


def nested_schema(depth: int) -> str:
    """Objects nested ``depth`` deep (as text: Python's own JSON encoder recurses too deep for it)."""
    return '{"type":"object","properties":{"a":' * depth + '{"type":"string"}' + '},"required":["a"]}' * depth


HOSTILE = {
    "a 4 MB prompt": ("hello world " * 350_000, SHORT, "cannot fit the context"),
    "a schema nested 600 deep": ("hi", SamplingParams(json_schema=nested_schema(600)), "json_schema"),
    "a million stop strings": ("hi", SamplingParams(stop=tuple(f"s{i}" for i in range(1_000_000))), "stop"),
}


@pytest.fixture(scope="module")
def server(serve, tiny_with_tokenizer):
    return serve("--model", tiny_with_tokenizer, "--workers", "1")


def latency(client: Client) -> float:
    start = time.monotonic()
    client.generate("The cat sat on the", SHORT)
    return time.monotonic() - start


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_request_is_refused_and_stalls_nobody(server, kind):
    prompt, params, named = HOSTILE[kind]
    pids = server.worker_pids()
    with Client(server.address) as hostile, Client(server.address) as other:
        alone = min(latency(other) for _ in range(3))
        errors: list[Exception] = []

        def send() -> None:
            try:
                hostile.generate(prompt, params)
            except Exception as e:
                errors.append(e)

        thread = threading.Thread(target=send)
        thread.start()
        during = max(latency(other) for _ in range(3))
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], InvalidRequest) and named in str(errors[0])
        assert during < max(1.0, 5 * alone), (alone, during)
        assert other.stats()["router"]["workers_lost"] == 0
    assert server.worker_pids() == pids
