"""Live replay through an in-process Runtime on a tiny random model: closed-loop sessions,
metrics, long prompts, and agreement with the cache-only simulator."""

from __future__ import annotations

import numpy as np
import pytest

import radixrt.lang as sgl
from radixrt.replay.cache_sim import simulate
from radixrt.replay.metrics import summarize, unique_tokens
from radixrt.replay.replayer import Replayer, ReplayOptions
from radixrt.replay.trace import TraceRequest
from testkit.traces import agent_trace


@pytest.fixture(scope="module")
def rt(tiny_with_tokenizer):
    runtime = sgl.Runtime(tiny_with_tokenizer, page_size=4, kv_cache_bytes=8 << 20)
    yield runtime
    runtime.shutdown()


def test_sessions_are_closed_loops_and_the_metrics_add_up(rt):
    trace = agent_trace()
    result = Replayer(rt, ReplayOptions(timing="recorded", speedup=10, concurrency=3, progress=False)).run(trace)
    by_id = {r.id: r for r in result.records}
    for request in trace:
        record = by_id[request.id]
        assert record.error is None and record.output_tokens == 4
        if request.parent is not None:
            assert record.sent >= by_id[request.parent].finished  # never before its predecessor finished
    report = summarize(result)
    assert report["succeeded"] == 9 and report["failed"] == report["skipped_too_long"] == 0
    assert report["computed_tokens"] == report["prompt_tokens"] - report["cached_tokens"]
    assert report["unique_prompt_tokens"] == unique_tokens([np.asarray(r.input_ids) for r in trace])
    assert report["hit_rate"] > 0.4 and report["ttft_s"]["p50"] > 0 and report["output_tokens_per_s"] > 0


def test_long_prompts_are_skipped_or_cut_and_counted(rt):
    long = TraceRequest(
        "x", "long", input_ids=list(range(100, 700)), output_tokens=8
    )  # the context is 2048... of tokens
    room = min(rt.engine.max_context, rt.engine.pool.num_tokens)
    too_long = TraceRequest("y", "too-long", input_ids=[5] * (room + 10), output_tokens=8)
    skip = summarize(Replayer(rt, ReplayOptions(timing="max", progress=False)).run([long, too_long]))
    assert skip["skipped_too_long"] == 1 and skip["succeeded"] == 1
    cut = Replayer(rt, ReplayOptions(timing="max", long_prompts="cut", progress=False)).run([too_long])
    (record,) = cut.records
    assert record.cut and record.error is None and record.prompt.size + record.output_tokens < room


@pytest.mark.parametrize("host_pages, disk_pages", [(0, 0), (30, 0), (8, 100)])
def test_one_request_at_a_time_the_engine_hits_what_the_simulator_predicts(
    tiny_with_tokenizer, tmp_path, host_pages, disk_pages
):
    """At equal KV capacity, replaying one request at a time with nothing generated (so the engine
    caches what the simulator does: whole pages of prompts) hits exactly what the simulator with
    the engine's admission rules predicts, from each tier; the plain simulation (whole pages only)
    within 2%."""
    rng = np.random.default_rng(3)
    heads = [rng.integers(10, 40000, 36).tolist() for _ in range(4)]
    prompts = [
        np.asarray(
            heads[int(rng.integers(4))] + rng.integers(10, 40000, int(rng.integers(1, 20)) * 4 + 2).tolist(),
            dtype=np.int32,
        )
        for _ in range(40)
    ]
    page, pages = 4, 60
    runtime = sgl.Runtime(tiny_with_tokenizer, page_size=page, kv_cache_bytes=1 << 20)
    runtime.shutdown()
    per_page = (1 << 20) // runtime.engine.pool.num_pages
    tiers = {"host_cache_bytes": host_pages * per_page}
    if disk_pages:
        tiers |= {"disk_cache": tmp_path, "disk_cache_bytes": disk_pages * per_page}
    runtime = sgl.Runtime(tiny_with_tokenizer, page_size=page, kv_cache_bytes=pages * per_page, **tiers)
    try:
        assert runtime.engine.pool.num_pages == pages
        trace = [TraceRequest("s", f"r{i}", input_ids=p.tolist(), output_tokens=0) for i, p in enumerate(prompts)]
        report = summarize(Replayer(runtime, ReplayOptions(timing="max", concurrency=1, progress=False)).run(trace))
        stats = runtime.stats()
    finally:
        runtime.shutdown()
    expected = simulate(prompts, page, pages, engine_rules=True, host_pages=host_pages, disk_pages=disk_pages)
    assert report["cached_tokens"] == expected.hit_tokens and report["cached_tokens"] > 0
    assert stats.get("host_hit_tokens", 0) == report["host_cached_tokens"] == expected.host_hit_tokens
    assert stats.get("disk_hit_tokens", 0) == report["disk_cached_tokens"] == expected.disk_hit_tokens
    assert (expected.host_hit_tokens > 0) == (host_pages > 0) and (expected.disk_hit_tokens > 0) == (disk_pages > 0)
    if not host_pages + disk_pages:
        plain = simulate(prompts, page, pages).hit_tokens  # without the engine's partial page held: a little more
        assert abs(plain - expected.hit_tokens) <= 0.02 * plain


def test_a_recorded_program_replays(rt, tmp_path):
    """The recorder writes a lang program's requests as a trace: one session per state (a fork's
    branches are sessions of their own), each request the child of the one before in its session."""
    from radixrt.replay.record import TraceRecorder
    from radixrt.replay.trace import read_trace

    @sgl.function
    def prog(s):
        s += "Background: " + " ".join(["fact"] * 30) + "\n"
        s += sgl.gen("first", max_tokens=5, ignore_eos=True)
        forks = s.fork(2)
        forks += lambda i: f" Branch {i}:" + sgl.gen("b", max_tokens=3, ignore_eos=True)
        forks.join()
        s += sgl.gen("last", max_tokens=2, ignore_eos=True)

    recorder = TraceRecorder(rt)
    state = prog.run(backend=recorder, temperature=0)
    assert state.error() is None
    path = tmp_path / "program.jsonl"
    assert recorder.save(path) == 5  # first gen, the trunk's pin, two branches, last gen
    trace = read_trace(path).requests
    assert sorted(r.output_tokens for r in trace) == [0, 2, 3, 3, 5]
    assert len({r.session for r in trace}) == 4  # the main state, the fork's trunk, two branches
    main = [r for r in trace if r.session == trace[0].session]
    assert [r.parent for r in main] == [None, main[0].id] and main[1].output_tokens == 2
    result = Replayer(rt, ReplayOptions(timing="max", progress=False)).run(trace)
    assert all(r.error is None for r in result.records)


def test_rate_timing_spaces_session_starts(rt):
    trace = agent_trace(sessions=3, turns=1)
    result = Replayer(rt, ReplayOptions(timing="rate", rate=5.0, progress=False)).run(trace)
    starts = sorted(r.sent - result.started for r in result.records)
    assert all(start >= k / 5.0 - 1e-3 for k, start in enumerate(starts))
    with pytest.raises(ValueError, match="timing is one of"):
        Replayer(rt, ReplayOptions(timing="soon"))
