"""The server under bad input, overload and hostile endings, on a tiny random model (fast steps):
fuzzed frames, ten times more requests than the KV cache holds, CURVE keys, and a killed serve
process that must not leave workers behind."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys

import msgspec
import pytest
import zmq

from radixrt import SamplingParams
from radixrt.client import AsyncClient, Client, InvalidRequest, RequestFailed, ServerError
from radixrt.wire import protocol as p
from radixrt.wire.sockets import free_port
from testkit.servers import pid_alive, settled, start_server, wait_for


@pytest.fixture(scope="module")
def tiny_server(serve, tiny_with_tokenizer):
    # 64 KiB of KV per worker: 128 tokens, about one request of the overload test at a time
    return serve("--model", tiny_with_tokenizer, "--workers", "2", "--kv-cache-mb", "0.0625", "--page-size", "4")


def _fuzz_frames(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """(kind, frame) pairs: every kind of malformed message a client could send."""
    enc = msgspec.msgpack.encode
    bad_params = [
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 2.5},
        {"top_k": -3},
        {"max_new_tokens": -1},
        {"min_p": 1.0},
        {"stop": [""]},
        {"seed": 1.5},
        {"temperature": "hot"},
        {"nucleus": 0.9},
        {"repetition_penalty": 0.0},
        {"frequency_penalty": 3.0},
        {"stop_token_ids": [-2]},
        {"logprobs": "yes"},
    ]
    deep = '{"type":"array","items":' * 100 + '{"type":"string"}' + "}" * 100
    hostile_params = [  # valid messages whose cost would be the server's: refused by the caps
        {"stop": [f"s{i}" for i in range(10_000)]},
        {"stop": ["s" * 100_000]},
        {"stop_token_ids": [1] * 10_000},
        {"max_new_tokens": 2**63},
        {"json_schema": deep},
        {"regex": "(a|b)" * 2000},
        {"choices": ["c"] * 5000},
    ]
    makers = [
        lambda: ("random bytes", rng.randbytes(rng.randrange(0, 64))),
        lambda: ("not a map", enc(rng.choice([1, "generate", [1, 2, 3], None, 2.5, [{"type": "generate"}]]))),
        lambda: (
            "unknown tag",
            enc({"type": rng.choice(["generat", "GENERATE", "shutdown", "submit", "", 7]), "id": "x"}),
        ),
        lambda: ("wrong version", enc({"type": "hello", "version": rng.choice([0, 2, 99, -1])})),
        lambda: ("missing field", enc({"type": "generate", "prompt": "hi"})),
        lambda: ("wrong type", enc({"type": "generate", "id": rng.choice([5, None, ["a"], ""]), "prompt": "hi"})),
        lambda: ("wrong type", enc({"type": "generate", "id": "t", "prompt": rng.choice([5, ["a"], {"x": 1}])})),
        lambda: ("unknown field", enc({"type": "generate", "id": "t", "prompt": "hi", "priority": 1})),
        lambda: (
            "bad sampling",
            enc({"type": "generate", "id": "t", "prompt": "hi", "params": rng.choice(bad_params)}),
        ),
        lambda: (
            "bad prompt",
            enc({"type": "generate", "id": "t", "input_ids": rng.choice([[], [10**9], [-1], [1.5]])}),
        ),
        lambda: ("two prompts", enc({"type": "generate", "id": "t", "prompt": "hi", "input_ids": [1, 2]})),
        lambda: ("no prompt", enc({"type": "generate", "id": "t"})),
        lambda: ("too long", enc({"type": "generate", "id": "t", "input_ids": [5] * 5000})),
        lambda: ("bad chat", enc({"type": "generate", "id": "t", "messages": [{"role": "user"}]})),
        lambda: (
            "bad namespace",
            enc({"type": "generate", "id": "t", "prompt": "hi", "namespace": rng.choice([3, "n" * 300])}),
        ),
        lambda: ("truncated", enc({"type": "generate", "id": "t", "prompt": "hello there"})[:-3]),
        lambda: (
            "hostile sampling",
            enc({"type": "generate", "id": "t", "prompt": "hi", "params": rng.choice(hostile_params)}),
        ),
        lambda: (
            "hostile prompt",
            enc({"type": "generate", "id": "t", "prompt": "word " * rng.randrange(10**5, 10**6)}),
        ),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_fuzzed_frames_get_errors_and_nothing_dies(tiny_server):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(tiny_server.address)
    decode = p.decoder(p.ReplyMessage).decode
    pids = tiny_server.worker_pids()

    def reply(timeout_ms: int = 5000):
        assert sock.poll(timeout_ms), "no reply"
        return decode(sock.recv())

    try:
        sock.send(p.encode(p.Hello(p.PROTOCOL_VERSION)))
        assert isinstance(reply(), p.Welcome)
        kinds: dict[str, int] = {}
        for kind, frame in _fuzz_frames(random.Random(0), 999):
            sock.send(frame)
            answer = reply()
            assert isinstance(answer, p.Error), (kind, frame, answer)
            assert answer.code in ("bad_message", "invalid_request", "version"), (kind, answer)
            kinds[kind] = kinds.get(kind, 0) + 1
        assert len(kinds) == 17 and min(kinds.values()) > 20
        sock.send_multipart([p.encode(p.GetHealth()), b"extra"])  # a message is one frame
        assert reply().code == "bad_message"
        # The 1,000th: over the size limit. ZeroMQ drops the connection that sent it; the socket
        # reconnects by itself, and the router has forgotten it.
        sock.send(b"\x00" * (p.MAX_MESSAGE_BYTES + 1))
        wait_for(
            lambda: sock.send(p.encode(p.GetHealth())) or (sock.poll(200) and reply()),
            10,
            what="a reply after reconnecting",
        )
    finally:
        sock.close()
        context.term()
    assert tiny_server.proc.poll() is None and all(pid_alive(pid) for pid in pids.values())
    with Client(tiny_server.address) as client:
        out = client.generate("After the storm,", SamplingParams(max_new_tokens=5))
        assert len(out.token_ids) == 5
        assert client.stats()["router"]["bad_frames"] >= 500


def test_bad_requests_raise_errors_that_name_the_problem(tiny_server):
    with Client(tiny_server.address) as client:
        with pytest.raises(InvalidRequest, match="temperature"):
            client.generate("hi", SamplingParams(temperature=-1.0))
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            client.generate([10**6])
        with pytest.raises(InvalidRequest, match="KV cache"):
            client.generate(list(range(5000)))
        assert client.generate("hi", SamplingParams(max_new_tokens=2)).finish_reason in ("length", "stop")


def test_constraints_travel_with_the_request(tiny_server):
    with Client(tiny_server.address) as client:
        outs = client.generate(
            ["Code:"] * 4, SamplingParams(max_new_tokens=40, temperature=1.0, regex=r"[A-Z]{3}-[0-9]{2}")
        )
        assert all(re.fullmatch(r"[A-Z]{3}-[0-9]{2}", o.text) and o.finish_reason == "stop" for o in outs), outs
        with pytest.raises(InvalidRequest, match="json_schema constraint cannot be compiled"):
            client.generate("x", SamplingParams(json_schema='{"type": 5}'))


def test_overload_ten_times_the_kv_cache(tiny_server):
    """40 concurrent requests of 80 tokens each from four clients, on workers whose KV caches hold
    128 tokens each: every request completes, none is lost, and no page leaks."""
    params = SamplingParams(max_new_tokens=40, temperature=0.8, seed=1, ignore_eos=True)

    async def one_client(c: int) -> list:
        async with AsyncClient(tiny_server.address) as client:
            prompts = [[(c * 1000 + i * 37 + j) % 40000 for j in range(40)] for i in range(10)]
            return await client.generate(prompts, params)

    async def all_clients() -> list:
        return [o for outs in await asyncio.gather(*(one_client(c) for c in range(4))) for o in outs]

    outputs = asyncio.run(all_clients())
    assert len(outputs) == 40
    assert all(o.finish_reason == "length" and len(o.token_ids) == 40 and o.error is None for o in outputs)
    with Client(tiny_server.address) as client:
        wait_for(lambda: settled(client), 10, what="idle workers")
        stats = client.stats()
        assert stats["router"]["retractions"] + stats["router"]["evicted_pages"] > 0  # the pool was really short


def test_pins_hold_a_prefix_until_unpinned_or_the_client_leaves(tiny_server):
    """A pin keeps its prefix cached on its worker; an unpin, or its client's departure, releases it."""
    trunk = list(range(100, 140))

    def pins(client: Client) -> tuple[int, int]:
        stats = client.stats()
        return stats["router"]["pins"], sum(w["pins"] for w in stats["workers"].values())

    with Client(tiny_server.address) as client:
        pin = client.pin(trunk, request_id="trunk")
        assert pins(client) == (1, 1)
        with pytest.raises(InvalidRequest, match="names a pin already"):
            client.pin(trunk, request_id="trunk")
        assert client.generate(trunk + [7, 8], SamplingParams(max_new_tokens=2)).cached_tokens == 40
        client.unpin(pin)
        wait_for(lambda: pins(client) == (0, 0), 10, what="the pin's release")
        leaving = Client(tiny_server.address)
        leaving.pin(trunk)
        assert pins(client) == (1, 1)
        leaving.close()
        wait_for(lambda: pins(client) == (0, 0), 10, what="the release of a departed client's pin")
        wait_for(lambda: settled(client), 10, what="idle workers")


def test_too_many_requests_from_one_client_is_an_error(serve, tiny_with_tokenizer, tmp_path):
    """(This server listens on an ipc:// address.)"""
    address = f"ipc://{tmp_path / 'radixrt.sock'}"
    served = serve("--model", tiny_with_tokenizer, "--workers", "1", "--max-inflight", "3", "--address", address)
    assert served.address == address
    long = SamplingParams(max_new_tokens=1000, ignore_eos=True)

    async def run():
        async with AsyncClient(served.address) as client:
            streams = [client.stream("x", long) for _ in range(3)]
            for s in streams:
                await s.__anext__()
            with pytest.raises(Exception, match="too_many_requests"):
                await client.generate("one more")
            for s in streams:
                await s.aclose()

    asyncio.run(run())
    with Client(served.address) as client:
        wait_for(lambda: settled(client), 10, what="the closed streams to end")


def test_keys_guard_non_loopback_and_let_key_holders_in(tmp_path, tiny_with_tokenizer):
    cmd = [sys.executable, "-m", "radixrt"]
    refused = subprocess.run(
        [*cmd, "serve", "--model", tiny_with_tokenizer, "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "--keys" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = subprocess.run(
            [*cmd, "serve", "--model", tiny_with_tokenizer, "--port", str(taken.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert busy.returncode == 2 and "Address already in use" in busy.stderr, busy.stderr[-2000:]
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    subprocess.run([*cmd, "keys", str(keys)], check=True, timeout=60)
    subprocess.run([*cmd, "keys", str(stranger)], check=True, timeout=60)
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())  # knows the server, not let in
    served = start_server(
        ["--model", tiny_with_tokenizer, "--workers", "1", "--keys", str(keys)], tmp_path / "serve.log"
    )
    try:
        with Client(served.address, keys=keys) as client:
            assert len(client.generate("hi", SamplingParams(max_new_tokens=3)).token_ids) == 3
        for outsider in ({}, {"keys": stranger}):
            with pytest.raises(TimeoutError):
                Client(served.address, timeout=2, **outsider)
    finally:
        served.stop()


def test_killing_serve_leaves_no_worker_behind_and_fails_its_clients_requests(tmp_path, tiny_with_tokenizer):
    # a killed serve cannot remove its private socket directory: keep it under tmp_path
    served = start_server(
        ["--model", tiny_with_tokenizer, "--workers", "2", "--worker-address", f"ipc://{tmp_path}/w1"],
        tmp_path / "serve.log",
    )
    pids = list(served.worker_pids().values())
    assert len(pids) == 2
    long = SamplingParams(max_new_tokens=100_000, ignore_eos=True)
    with Client(served.address) as client:
        stream = client.stream("going on and on", long)
        next(stream)
        os.kill(served.proc.pid, signal.SIGKILL)
        with pytest.raises(ServerError, match="connection_lost"):
            list(stream)
    served.proc.wait(10)

    async def async_side():  # a fresh server, the asyncio client
        again = start_server(
            ["--model", tiny_with_tokenizer, "--workers", "1", "--worker-address", f"ipc://{tmp_path}/w2"],
            tmp_path / "serve2.log",
        )
        pids.extend(again.worker_pids().values())
        async with AsyncClient(again.address) as client:
            task = asyncio.create_task(client.generate(["one", "two"], long))
            await asyncio.sleep(0.5)
            os.kill(again.proc.pid, signal.SIGKILL)
            with pytest.raises(ServerError, match="connection_lost"):
                await asyncio.wait_for(task, 10)
        again.proc.wait(10)

    asyncio.run(async_side())
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), 10, what="the orphaned workers to exit")


def test_a_remote_worker_joins_and_its_loss_fails_requests_when_none_is_left(serve, tiny_with_tokenizer, tmp_path):
    port = free_port()
    served = serve("--model", tiny_with_tokenizer, "--workers", "0", "--worker-address", f"tcp://127.0.0.1:{port}")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radixrt",
            "worker",
            "--connect",
            f"tcp://127.0.0.1:{port}",
            "--model",
            tiny_with_tokenizer,
            "--name",
            "remote",
            "--threads",
            "1",
        ],
        stderr=(tmp_path / "worker.log").open("w"),
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    try:
        with Client(served.address) as client:
            with pytest.raises(Exception, match="unavailable"):
                client.generate("too early")
            wait_for(lambda: client.health()["workers"] == ["remote"], 60, interval=0.2, what="the worker to join")
            assert len(client.generate("hello", SamplingParams(max_new_tokens=3)).token_ids) == 3
            stream = client.stream("a long one", SamplingParams(max_new_tokens=100_000, ignore_eos=True))
            next(stream)
            worker.kill()
            with pytest.raises(RequestFailed, match="no worker is left"):
                list(stream)
            assert client.health() == {"ok": False, "workers": [], "inflight": 0}
    finally:
        worker.kill()
        worker.wait()
