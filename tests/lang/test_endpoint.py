"""The same programs through ``radixrt serve`` (RuntimeEndpoint) as in-process (Runtime): the same
greedy text, and pins that the server releases."""

from __future__ import annotations

from pathlib import Path

import pytest

import radixrt.lang as sgl
from radixrt.client import Client
from testkit.servers import start_server, wait_for


@sgl.function
def program(s, topic):
    s += sgl.system("You answer briefly.")
    s += sgl.user(f"Tell me about {topic}.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=12, ignore_eos=True, return_logprob=True, top_logprobs_num=3))
    forks = s.fork(3)
    forks += lambda i: sgl.user(f"Idea {i}?") + sgl.assistant(sgl.gen("idea", max_tokens=6, ignore_eos=True))
    forks.join()
    s += sgl.user("Pick one.")
    s += sgl.assistant(sgl.select("pick", choices=["first", "second", "third"]))
    s += "\nCode: " + sgl.gen("code", max_tokens=10, regex=r"[a-z]{3}-[0-9]{2}")


@pytest.fixture(scope="module")
def served(tiny_with_tokenizer, tmp_path_factory):
    server = start_server(
        ["--model", tiny_with_tokenizer, "--workers", "2", "--page-size", "16"],
        tmp_path_factory.mktemp("lang") / "serve.log",
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_program_gives_the_same_greedy_text_in_process_and_through_serve(served, tiny_with_tokenizer):
    local = sgl.Runtime(tiny_with_tokenizer, page_size=16)
    remote = sgl.RuntimeEndpoint(served.address)
    try:
        topics = [{"topic": t} for t in ("rivers", "mountains", "deserts")]
        here = program.run_batch(topics, backend=local, temperature=0)
        there = program.run_batch(topics, backend=remote, temperature=0)
        for a, b in zip(here, there):
            assert a.error() is None and b.error() is None, (a.error(), b.error())
            assert a.text() == b.text() and a["idea"] == b["idea"] and a["pick"] == b["pick"]
            assert a.token_ids() == b.token_ids()
            here_top, there_top = (s.get_meta_info("answer")["output_top_logprobs"] for s in (a, b))
            assert [[t for _, t, _ in top] for top in here_top] == [[t for _, t, _ in top] for top in there_top]
            assert [lp for top in here_top for lp, _, _ in top] == pytest.approx(
                [lp for top in there_top for lp, _, _ in top], abs=1e-3
            )
        used = [(b.token_usage.prompt_tokens, b.token_usage.completion_tokens) for b in (local, remote)]
        assert used[0] == used[1] and used[0][0] > 0 and used[0][1] > 0  # the same requests, counted alike
        assert local.get_model_name() == tiny_with_tokenizer
        assert remote.get_model_name() == remote.get_server_info()["model_path"] == Path(tiny_with_tokenizer).name
        info = sgl.get_server_info(remote)
        assert info["num_workers"] == 2 == len(info["workers"]) and info["hit_rate"] > 0.3
        assert sgl.flush_cache(remote) is True
        assert all(w["pages_cached"] == 0 for w in remote.get_server_info()["workers"].values())
    finally:
        remote.shutdown()
        local.shutdown()
    with Client(served.address) as client:
        wait_for(
            lambda: client.stats()["router"]["pins"] == 0 and client.stats()["router"]["inflight"] == 0,
            10,
            what="no pins and nothing in flight",
        )


def test_a_program_that_raises_leaves_no_pin_or_request_on_the_server(served):
    @sgl.function
    def dies(s):
        s += "Background: " + "lorem ipsum " * 40
        forks = s.fork(2)
        forks += lambda i: sgl.gen("long", max_tokens=400, ignore_eos=True)
        raise KeyError("boom")

    remote = sgl.RuntimeEndpoint(served.address)
    try:
        with pytest.raises(KeyError, match="boom"):
            dies.run(backend=remote, temperature=0)
        with Client(served.address) as client:

            def clean() -> bool:
                stats = client.stats()
                return (
                    stats["router"]["pins"] == 0
                    and stats["router"]["inflight"] == 0
                    and all(w["pins"] == 0 and w["running"] == 0 for w in stats["workers"].values())
                )

            wait_for(clean, 10, what="the program's pins and requests released")
    finally:
        remote.shutdown()
