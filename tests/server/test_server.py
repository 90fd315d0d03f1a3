"""The server against the in-process engine, on the default model: same greedy tokens through
``radixrt serve`` with one and two workers, streamed or not; aborts free pages; a worker killed
mid-stream or a client killed mid-stream loses nothing and leaks nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from radixrt import Engine, SamplingParams
from radixrt.client import AsyncClient, Client
from radixrt.outputs import GenerateOutput
from testkit.servers import pid_alive, settled, wait_for

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
SYSTEM = {"role": "system", "content": "You are a helpful assistant who answers in one sentence."}
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "Name a prime number above 50.",
    "What do bees make?",
]


@pytest.fixture(scope="module")
def engine():
    """The in-process reference, on one thread: the servers' workers need the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_workers(serve):
    return serve("--workers", "2")


def chats() -> list[list[dict]]:
    return [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS]


@pytest.mark.parametrize("workers", [1, 2])
def test_greedy_outputs_equal_the_engine(engine, serve, two_workers, workers):
    served = two_workers if workers == 2 else serve("--workers", "1")
    prompts = [engine.apply_chat_template(c) for c in chats()]
    expected = engine.generate(prompts, GREEDY)
    with Client(served.address) as client:
        assert client.health()["workers"] == [f"w{i}" for i in range(workers)]
        got = client.generate(chats(), GREEDY)  # chat messages: the router applies the template
        assert [o.token_ids for o in got] == [e.token_ids for e in expected]
        assert [o.text for o in got] == [e.text for e in expected]
        assert all(
            o.finish_reason == e.finish_reason and o.prompt_tokens == len(p) for o, e, p in zip(got, expected, prompts)
        )
        by_ids = client.generate(prompts, GREEDY)
        assert [o.token_ids for o in by_ids] == [e.token_ids for e in expected]
        streamed = ["".join(client.stream(p, GREEDY)) for p in prompts]
        assert streamed == [e.text for e in expected]
        outs = list(client.outputs(prompts[0], GREEDY))  # every step's output says what its prompt cost
        assert len(outs) > 1 and {(o.prompt_tokens, o.cached_tokens) for o in outs} == {
            (len(prompts[0]), outs[-1].cached_tokens)
        }
        assert GenerateOutput(outs[0].request_id).add(outs[0]).token_ids == outs[0].token_ids
        if workers == 2:
            assert set(o.cached_tokens > 0 for o in by_ids) == {True}  # each went where its prefix was
        wait_for(lambda: settled(client), 10, what="idle workers")


def test_stop_strings_are_the_router_s(engine, two_workers):
    prompt = engine.apply_chat_template([{"role": "user", "content": "Count from 1 to 10, separated by commas."}])
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=", 4")
    expected = engine.generate(prompt, params)
    with Client(two_workers.address) as client:
        got = client.generate(prompt, params)
        assert (got.text, got.token_ids, got.matched_stop, got.text_token_count) == (
            expected.text,
            expected.token_ids,
            expected.matched_stop,
            expected.text_token_count,
        )
        pieces = list(client.stream(prompt, params))
        assert "".join(pieces) == expected.text and all(", 4" not in piece for piece in pieces)
        wait_for(lambda: settled(client), 10, what="the cancelled request's pages")


def test_abort_and_closing_a_stream_free_pages(two_workers):
    long = SamplingParams(max_new_tokens=500, temperature=0, ignore_eos=True)
    with Client(two_workers.address) as client:
        stream = client.stream("Tell me a very long story about a lighthouse keeper.", long)
        assert [next(stream) for _ in range(3)]
        stream.close()
        wait_for(lambda: settled(client), 10, what="pages back after closing a stream")

        aborted = client.stream("Tell me a very long story about a baker.", long, request_id="to-abort")
        next(aborted)
        client.abort("to-abort")
        list(aborted)  # ends by itself (finish reason "abort"), without an error
        wait_for(lambda: settled(client), 10, what="pages back after an abort")
        assert client.stats()["router"]["aborted"] >= 2


def test_namespaces_never_share_a_prefix(two_workers):
    prompt = "A shared system prompt that is long enough to fill a few pages of the cache. " * 4
    params = SamplingParams(max_new_tokens=2, temperature=0)
    with Client(two_workers.address) as client:
        first = client.generate(prompt, params, namespace="tenant-a")
        again = client.generate(prompt, params, namespace="tenant-a")
        other = client.generate(prompt, params, namespace="tenant-b")
        assert first.cached_tokens == 0 and other.cached_tokens == 0
        assert again.cached_tokens >= again.prompt_tokens - 16


def test_a_killed_worker_s_requests_finish_elsewhere(engine, two_workers):
    """kill -9 of a worker mid-stream: every request completes, greedy text equals an uninterrupted
    run, the death is noticed within 2 s, and the restarted worker takes requests again."""
    params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    prompts = [
        engine.apply_chat_template([SYSTEM, {"role": "user", "content": f"Describe the number {n} at length."}])
        for n in range(6)
    ]
    expected = [o.text for o in engine.generate(prompts, params)]
    served = two_workers
    progress, killed = threading.Event(), {}

    def kill_one() -> None:
        progress.wait(60)
        with Client(served.address) as control:
            load = control.stats()["router"]["load"]
            victim = max(load, key=load.get)
            os.kill(served.worker_pids()[victim], signal.SIGKILL)
            start = time.monotonic()
            wait_for(lambda: victim not in control.health()["workers"], 5, what="the router to notice the dead worker")
            killed.update(name=victim, noticed=time.monotonic() - start)

    async def run() -> list[str]:
        async with AsyncClient(served.address) as client:
            pieces = [[] for _ in prompts]

            async def consume(i: int) -> None:
                async for piece in client.stream(prompts[i], params):
                    pieces[i].append(piece)
                    if all(len(p) >= 3 for p in pieces):
                        progress.set()

            await asyncio.gather(*(consume(i) for i in range(len(prompts))))
            return ["".join(p) for p in pieces]

    killer = threading.Thread(target=kill_one)
    killer.start()
    texts = asyncio.run(run())
    killer.join(30)
    assert killed, "no worker was killed"
    assert killed["noticed"] < 2.0
    assert texts == expected
    with Client(served.address) as client:
        assert client.stats()["router"]["resubmitted"] >= 1
        wait_for(lambda: len(client.health()["workers"]) == 2, 60, interval=0.2, what="the worker's restart")
        client.generate([f"Question {i}: what is {i} squared?" for i in range(6)], SamplingParams(max_new_tokens=4))
        assert client.stats()["workers"][killed["name"]]["prompt_tokens"] > 0  # the new process served some
        wait_for(lambda: settled(client), 10, what="idle workers")


CLIENT_SCRIPT = """
import asyncio, sys
from radixrt import SamplingParams
from radixrt.client import AsyncClient

async def main():
    client = AsyncClient(sys.argv[1])
    params = SamplingParams(max_new_tokens=1000, temperature=0, ignore_eos=True)
    started = asyncio.Event()
    async def consume(i):
        async for _ in client.stream(f"Write a long essay on topic {i}.", params):
            started.set()
    tasks = [asyncio.create_task(consume(i)) for i in range(3)]
    await started.wait()
    print("streaming", flush=True)
    await asyncio.gather(*tasks)

asyncio.run(main())
"""


def test_a_killed_client_s_requests_are_cancelled(two_workers):
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, two_workers.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "streaming"
        with Client(two_workers.address) as client:
            assert client.stats()["router"]["inflight"] == 3
            proc.kill()
            proc.wait(10)
            wait_for(lambda: settled(client), 10, what="the vanished client's requests to end")
            assert client.stats()["router"]["clients_lost"] >= 1
    finally:
        if pid_alive(proc.pid):
            proc.kill()
            proc.wait()
