"""Tenants of the HTTP API against each other, through a real ``radixrt serve`` (a tiny random
model) with API keys from every source (an option, a key file, the environment) and an admin key:
which key a request counts as, what each key sees, what one tenant can hold of the server, and how
much of the front end a request can make it keep."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from radixrt import SamplingParams
from radixrt.cli import main
from radixrt.client import AsyncClient, Client, ServerError
from radixrt.http.app import MAX_BODY_BYTES, MAX_RUNS_PER_REQUEST
from radixrt.server.launch import ServerProcess
from radixrt.wire.protocol import key_id
from testkit.servers import settled, wait_for

A = "sk-tenant-a"  # --api-key
B = "sk-tenant-b"  # in a key file
D = "sk-tenant-d"  # in RADIXRT_API_KEYS
ADMIN = "sk-admin-c"
MAX_INFLIGHT = 2
LONG = {"prompt": "Tell a long story", "max_tokens": 1500, "ignore_eos": True}
"""A request that runs for many steps: ended early only by an abort."""


def start(args: list[str], log, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(
        ["--threads", "1", "--workers", "1", "--page-size", "4", "--http-port", "0", *args],
        log,
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def served(tiny_with_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenants")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# the tenants' keys\n\n  {B}  \n")
    server = start(
        [
            "--model",
            tiny_with_tokenizer,
            "--api-key",
            A,
            "--api-key-file",
            str(key_file),
            "--admin-key",
            ADMIN,
            "--max-inflight",
            str(MAX_INFLIGHT),
        ],
        folder / "serve.log",
        env={"RADIXRT_API_KEYS": f"{D}, "},
    )
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def post(served, body: dict, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {**(bearer(key) if key else {}), **kwargs.pop("headers", {})}
    return httpx.post(served.http_url + "/v1/completions", json=body, headers=headers, timeout=60, **kwargs)


def get(served, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    return httpx.get(served.http_url + path, headers=bearer(key) if key else {}, timeout=30, **kwargs)


def cached(reply: httpx.Response) -> int:
    assert reply.status_code == 200, reply.text
    return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def router(served) -> dict:
    """The router's figures, asked as an admin (a client without keys on loopback is one)."""
    with Client(served.address) as client:
        return client.stats()["router"]


def quiet(served) -> dict:
    """The router's figures once nothing runs."""
    with Client(served.address) as client:
        wait_for(lambda: settled(client), 30, what="every request to end")
        return client.stats()["router"]


def test_the_key_that_authorizes_a_request_is_the_one_it_counts_as(served):
    """``?key=A`` and ``Bearer A`` share A's namespace; a made-up bearer beside ``?key=A`` is A."""
    prompt = "Alpha's query-key preamble, long enough to span a few pages of tokens. " * 2
    assert cached(post(served, {"prompt": prompt + "one", "max_tokens": 2}, A)) == 0
    assert cached(post(served, {"prompt": prompt + "two", "max_tokens": 2}, params={"key": A})) > 0
    forged = post(served, {"prompt": prompt + "three", "max_tokens": 2}, "sk-made-up", params={"key": A})
    assert cached(forged) > 0
    assert cached(post(served, {"prompt": prompt + "four", "max_tokens": 2}, B)) == 0
    assert post(served, {"prompt": "x", "max_tokens": 2}, "sk-made-up").status_code == 401


def test_keys_from_a_file_and_the_environment_are_accepted(served, tmp_path, capsys):
    for key in (B, D):
        assert post(served, {"prompt": "Hello", "max_tokens": 2}, key).status_code == 200
    assert main(["serve", "--http-port", "0", "--api-key-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the key file" in capsys.readouterr().err
    (tmp_path / "empty").write_text("# nothing but a comment\n\n")
    assert main(["serve", "--http-port", "0", "--api-key-file", str(tmp_path / "empty")]) == 2
    assert "holds no key" in capsys.readouterr().err


def test_a_tenant_sees_its_own_prefixes_and_the_admin_every_ones(served):
    quiet(served)
    with Client(served.address) as client:
        assert client.flush_cache()
    for key, prompt in ((B, "Bravo's secret plan"), (A, "Alpha's own notes")):
        for end in ("one", "two"):  # a prefix reused: the cache's most reused prefixes list it
            body = {"prompt": f"{prompt}, in several pages of tokens: {end}", "max_tokens": 2}
            assert post(served, body, key).status_code == 200
    for mine in (get(served, "/stats.json", A), get(served, "/stats.json", params={"key": A})):
        assert mine.status_code == 200 and "Alpha" in mine.text and "Bravo" not in mine.text
        prefixes = [p for w in mine.json()["workers"].values() for p in w["top_prefixes"]]
        assert prefixes and {p["namespace"] for p in prefixes} == {key_id(A)}
    every = get(served, "/stats.json", ADMIN)
    assert every.status_code == 200 and "Alpha" in every.text and "Bravo" in every.text
    assert get(served, "/stats.json").status_code == 401


def test_health_tells_only_the_admin_key_more_than_ok(served):
    for key in (None, A, "sk-made-up"):
        reply = get(served, "/health", key)
        assert reply.status_code == 200 and reply.json() == {"ok": True}
    detailed = get(served, "/health", ADMIN).json()
    assert detailed["ok"] and detailed["workers"] == ["w0"] and isinstance(detailed["inflight"], int)


def test_metrics_are_the_admin_keys(served):
    assert get(served, "/metrics").status_code == 401
    assert get(served, "/metrics", A).status_code == 403
    reply = get(served, "/metrics", ADMIN)
    assert reply.status_code == 200 and "radixrt_requests_total" in reply.text


def test_a_tenant_at_its_limit_is_refused_while_another_is_served(served):
    quiet(served)
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_INFLIGHT):  # the response starts once the run has output: it is in flight
            running = stack.enter_context(
                httpx.stream(
                    "POST", served.http_url + "/v1/completions", json={**LONG, "stream": True}, headers=bearer(A)
                )
            )
            assert running.status_code == 200
        for stream in (False, True):
            refused = post(served, {"prompt": "one more", "max_tokens": 2, "stream": stream}, A)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_requests"
        assert post(served, {"prompt": "meanwhile", "max_tokens": 2}, B).status_code == 200
    assert quiet(served)["inflight"] == 0


def test_too_many_runs_in_one_request_are_refused(served):
    before = router(served)["requests"]
    for body in ({"prompt": ["x"] * (MAX_RUNS_PER_REQUEST + 1)}, {"prompt": ["x"] * 5, "n": 16}):
        reply = post(served, {**body, "max_tokens": 2}, A)
        assert reply.status_code == 400 and "MAX_RUNS_PER_REQUEST" in reply.json()["error"]["message"]
    assert router(served)["requests"] == before


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_run_cancels_the_other_runs_of_its_request(served, stream):
    before = quiet(served)
    reply = post(served, {**LONG, "n": MAX_INFLIGHT + 1, "stream": stream}, A)
    assert reply.status_code == 429, reply.text
    after = quiet(served)
    assert after["aborted"] - before["aborted"] == MAX_INFLIGHT and after["finished"] == before["finished"]


def test_a_client_that_leaves_a_whole_request_aborts_every_run(served):
    before = quiet(served)
    body = json.dumps({**LONG, "n": MAX_INFLIGHT}).encode()
    url = urlsplit(served.http_url)
    with socket.create_connection((url.hostname, url.port)) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: radixrt\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {A}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: router(served)["inflight"] == MAX_INFLIGHT, 30, what="both runs to start")
    after = quiet(served)
    assert after["aborted"] - before["aborted"] == MAX_INFLIGHT and after["finished"] == before["finished"]


def status_while_sending(served, head: str, body: bytes) -> str:
    """The status line the server answers with while the body is still unfinished (it never is)."""
    url = urlsplit(served.http_url)
    with socket.create_connection((url.hostname, url.port), timeout=20) as conn:
        conn.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: radixrt\r\nAuthorization: Bearer {A}\r\n{head}\r\n".encode() + body
        )
        answer = b""
        while b"\r\n" not in answer:
            answer += conn.recv(4096) or pytest.fail(f"the connection closed: {answer!r}")
        return answer.split(b"\r\n")[0].decode()


def test_an_over_large_body_is_refused_before_it_is_read(served):
    declared = status_while_sending(served, f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", b'{"prompt": "')
    assert declared.startswith("HTTP/1.1 413")
    piece = 64 << 10
    chunks = b"".join(b"%x\r\n" % piece + b"x" * piece + b"\r\n" for _ in range(MAX_BODY_BYTES // piece + 1))
    chunked = status_while_sending(served, "Transfer-Encoding: chunked\r\n", chunks)
    assert chunked.startswith("HTTP/1.1 413")
    assert post(served, {"prompt": "still here", "max_tokens": 2}, A).status_code == 200


def test_a_reader_that_falls_behind_is_cut_off(served):
    """A request whose reader stops reading is aborted once ``max_unread`` replies wait, and the
    reader hears why: a stopped reader cannot make its client hold replies without bound."""
    before = quiet(served)

    async def scenario() -> None:
        async with AsyncClient(served.address, max_unread=4) as client:
            outputs = client.outputs("Tell a long story", SamplingParams(max_new_tokens=1500, ignore_eos=True))
            await anext(outputs)
            for _ in range(600):  # not reading, the request is aborted all the same
                if (await client.stats())["router"]["inflight"] == 0:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(ServerError, match="fell behind"):
                async for _ in outputs:
                    pass

    asyncio.run(scenario())
    after = quiet(served)
    assert after["aborted"] - before["aborted"] == 1 and after["finished"] == before["finished"]


def test_with_curve_keys_the_front_end_is_an_admin_client(tiny_with_tokenizer, tmp_path):
    """Behind ``--keys``, the front end connects with the admin pair: it names its tenants'
    namespaces as they are, and the admin key's views get every namespace and the workers."""
    assert main(["keys", str(tmp_path / "keys")]) == 0
    (tmp_path / "admin.txt").write_text(ADMIN + "\n")
    args = ["--model", tiny_with_tokenizer, "--keys", str(tmp_path / "keys"), "--api-key", A]
    with start([*args, "--admin-key-file", str(tmp_path / "admin.txt")], tmp_path / "serve.log") as server:
        for end in ("one", "two"):
            body = {"prompt": f"Alpha behind keys, in several pages: {end}", "max_tokens": 2}
            assert post(server, body, A).status_code == 200
        health = get(server, "/health", ADMIN).json()
        assert health["workers"] == ["w0"] and health["inflight"] == 0
        every = get(server, "/stats.json", ADMIN)
        assert every.status_code == 200, every.text
        namespaces = {p["namespace"] for w in every.json()["workers"].values() for p in w["top_prefixes"]}
        assert key_id(A) in namespaces
