"""Retention the user controls, through a real ``radixrt serve`` (a tiny random model, a device pool
small enough that other prompts push a prefix out): ``Client.retain``, Anthropic-style
``cache_control`` and OpenAI's ``prompt_cache_retention`` keep a prefix cached past the eviction it
would suffer, within a per-namespace cap; ``prompt_cache_key`` sends requests to one worker."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest

from radixrt import SamplingParams
from radixrt.client import Client, ServerError
from radixrt.outputs import RequestFailed

KEY = "sk-retain"
PAGE = 4
ONE = SamplingParams(max_new_tokens=1, temperature=0)


@pytest.fixture(scope="module")
def served(serve, tiny_with_tokenizer):
    # 2 workers of 128 pages (512 tokens) each; a namespace may retain 32 pages (a quarter)
    return serve(
        "--model",
        tiny_with_tokenizer,
        "--workers",
        "2",
        "--page-size",
        str(PAGE),
        "--kv-cache-mb",
        "0.25",
        "--http-port",
        "0",
        "--api-key",
        KEY,
    )


def ids(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(100, 40000, n).tolist()


def flood(client: Client, namespace: str | None, route_key: str | None = None, n: int = 24) -> None:
    """Enough other prompts to push every unretained prefix out of a worker's pool."""
    for seed in range(1000, 1000 + n):
        list(client.outputs(ids(seed, 120), ONE, namespace=namespace, route_key=route_key))


def test_a_retained_prompt_outlives_the_eviction_that_takes_the_rest(served):
    kept, dropped = ids(1, 60), ids(2, 60)
    with Client(served.address) as client:
        first = client.retain(kept, ttl=600, namespace="r", route_key="one")
        assert first.cached_tokens == 0
        list(client.outputs(dropped, ONE, namespace="r", route_key="one"))
        flood(client, "r", route_key="one")
        again = client.generate(kept, ONE, namespace="r")
        other = client.generate(dropped, ONE, namespace="r")
    assert again.cached_tokens == (len(kept) - 1) // PAGE * PAGE  # all but the last token's page
    assert other.cached_tokens == 0


def test_retention_past_the_namespace_cap_is_refused_with_the_cap(served):
    with Client(served.address) as client:
        client.retain(ids(3, 100), ttl=60, namespace="capped", route_key="cap")
        with pytest.raises(RequestFailed, match=r"retention cap of 32 pages \(25 retained now\)"):
            client.retain(ids(4, 100), ttl=60, namespace="capped", route_key="cap")
        with pytest.raises(ServerError, match="ttl"):
            client.retain(ids(5, 10), ttl=-1, namespace="capped")
        assert client.generate(ids(6, 10), ONE).finish_reason == "length"  # the server goes on


def test_requests_with_one_route_key_go_to_one_worker(served):
    with Client(served.address) as client:
        before = {w: s["prompt_tokens"] for w, s in client.stats()["workers"].items()}
        for seed in range(20, 28):
            list(client.outputs(ids(seed, 30), ONE, namespace="keyed", route_key="session-7"))
        after = {w: s["prompt_tokens"] for w, s in client.stats()["workers"].items()}
    grown = [w for w in after if after[w] > before.get(w, 0)]
    assert len(grown) == 1 and after[grown[0]] - before[grown[0]] == 8 * 30


def chat(http_url: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(f"{http_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_cache_control_retains_the_chat_through_its_message(served):
    system = " ".join(f"rule {i}: be precise." for i in range(12))  # within the cap of 32 pages
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hello"},
    ]
    body = {"messages": messages, "max_tokens": 1, "prompt_cache_key": "chat"}
    first = chat(served.http_url, body)
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    assert usage["prompt_tokens_details"]["cache_write_tokens"] == usage["prompt_tokens"]
    with Client(served.address) as client:
        flood(client, client_namespace(), route_key="chat")
    second = chat(served.http_url, {**body, "messages": [messages[0], {"role": "user", "content": "bye"}]})
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= len(system.split()) // 2  # the system turn, at least, is still cached
    long = [
        {"role": "system", "content": [{"type": "text", "text": system * 4, "cache_control": {"type": "ephemeral"}}]}
    ]
    refused = chat(served.http_url, {**body, "messages": long})
    assert refused.status_code == 400 and "retention cap" in refused.json()["error"]["message"]
    part = {**messages[0]["content"][0], "cache_control": {"type": "ephemeral", "ttl": "2d"}}
    bad = chat(served.http_url, {**body, "messages": [{"role": "system", "content": [part]}]})
    assert bad.status_code == 400 and "cache_control" in bad.json()["error"]["message"]


def test_prompt_cache_retention_is_checked(served):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert chat(served.http_url, {**body, "prompt_cache_retention": "24h"}).status_code == 200
    bad = chat(served.http_url, {**body, "prompt_cache_retention": "forever"})
    assert bad.status_code == 400 and "in_memory, 24h" in bad.json()["error"]["message"]


def client_namespace() -> str:
    """The namespace the HTTP API gives requests under ``KEY``."""
    return "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
