"""Attention sinks and a sliding window: a request with ``kv_window`` holds a bounded number of pages,
generates past the model's context, recomputes its sinks at the positions right before its window,
leaves the cache's shared pages shared, and refuses what it cannot do."""

import numpy as np
import pytest
import torch

from radixrt import Engine, SamplingParams
from radixrt.engine.window import KVWindow, window_pages
from testkit.engines import TINY_VOCAB, check_pages, run_to_end, tiny_llama

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

CONTEXT = 128


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> str:
    """A 2-layer random Llama with a 128-token context."""
    return tiny_llama(tmp_path_factory.mktemp("short"), context=CONTEXT)


def greedy(n: int, **window) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True, **window)


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


PROMPT = np.random.default_rng(0).integers(0, TINY_VOCAB, 40).tolist()


def test_a_window_that_never_slides_computes_as_dense_attention(short):
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    dense = engine.add_request(PROMPT, greedy(30))
    windowed = engine.add_request(PROMPT, greedy(30, kv_window=64, sink_tokens=4))
    out = run_to_end(engine)
    assert tokens(out[dense]) == tokens(out[windowed])
    check_pages(engine)


@pytest.mark.parametrize("sinks", [0, 4, 20])
def test_a_window_generates_past_the_context_in_bounded_pages(short, sinks):
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    windowed = engine.add_request(PROMPT, greedy(400, kv_window=48, sink_tokens=sinks))
    dense = engine.add_request(PROMPT, greedy(400))
    most, outputs = 0, {}
    while engine.has_work():
        for o in engine.step():
            outputs.setdefault(o.request_id, []).append(o)
        for req in engine.scheduler.running:
            if req.window is not None:
                most = max(most, req.pages.size)
    assert len(tokens(outputs[windowed])) == 400 and outputs[windowed][-1].finish_reason == "length"
    assert len(tokens(outputs[dense])) == CONTEXT - len(PROMPT)  # clipped to the context, as without a window
    assert most <= window_pages(sinks, 48, 16)
    check_pages(engine)


def test_sinks_are_recomputed_at_the_positions_right_before_the_window(short):
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    run_to_end(engine) if engine.add_request(PROMPT, greedy(1)) else None  # the prompt's first pages, cached
    page0 = int(engine.cache.match_prefix(np.array(PROMPT[:32]), None).pages[0])
    rid = engine.add_request(PROMPT, greedy(200, kv_window=32, sink_tokens=5))
    req = engine.requests[rid]
    while req.window.shift <= 0 or req.window.start < 96:
        engine.step()
    assert req.window.shift > 0 and req.pages[0] != page0
    engine.step()  # a step whose chunk runs after the sinks' recomputation, window unmoved or moved on
    w, model = req.window, engine.model
    rope = model.ropes["default"]
    cos, sin = rope.angles(torch.tensor([w.shift]), torch.float32)
    for layer in range(model.config.num_hidden_layers):
        k_dense = engine.pool.k[layer, page0, : w.sinks]
        k_sinks = engine.pool.k[layer, req.pages[0], : w.sinks]
        torch.testing.assert_close(k_sinks, rope.rotate(k_dense, cos, sin), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(
            engine.pool.v[layer, req.pages[0], : w.sinks], engine.pool.v[layer, page0, : w.sinks]
        )
    engine.abort(rid)
    run_to_end(engine)
    check_pages(engine)


def test_the_caches_pages_stay_shared_when_a_window_slides_past_them(short):
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    prompt = np.random.default_rng(1).integers(0, TINY_VOCAB, 100).tolist()
    run_to_end(engine) if engine.add_request(prompt, greedy(1)) else None
    cached = engine.cache.prefix_length(np.array(prompt), None)
    assert cached >= 96
    engine.add_request(prompt, greedy(150, kv_window=32, sink_tokens=4))
    run_to_end(engine)
    assert engine.cache.prefix_length(np.array(prompt), None) == cached
    assert engine.stats()["cached_tokens"] >= 32  # the window's first 48 tokens came from the cache
    check_pages(engine)


def test_a_long_prompt_is_prefilled_through_its_window(short):
    """A prompt ten times the context, scored token by token under the window: finite log-probs,
    and the first tokens' equal those of dense attention, which the window has not cut yet."""
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    prompt = np.random.default_rng(2).integers(0, TINY_VOCAB, 10 * CONTEXT).tolist()
    rid = engine.add_request(prompt, greedy(4, kv_window=64, sink_tokens=4), prompt_logprobs_from=1)
    out = run_to_end(engine)[rid][-1]
    assert len(out.prompt_logprobs) == len(prompt) - 1 and np.isfinite(out.prompt_logprobs).all()
    head = engine.add_request(prompt[:60], greedy(1), prompt_logprobs_from=1)
    dense = run_to_end(engine)[head][-1].prompt_logprobs
    np.testing.assert_allclose(out.prompt_logprobs[:59], dense, atol=1e-4)
    check_pages(engine)


def test_windowed_requests_retracted_for_memory_start_over_and_finish(short):
    engine = Engine(short, page_size=16, kv_cache_bytes=12 * 16 * 2 * 2 * 2 * 16 * 4)  # 12 pages
    assert engine.pool.num_pages == 12
    ids = [engine.add_request(PROMPT[: 20 + i], greedy(120, kv_window=32, sink_tokens=4)) for i in range(5)]
    out = run_to_end(engine)
    assert all(len(tokens(out[i])) == 120 for i in ids)
    assert engine.stats()["retractions"] > 0
    check_pages(engine)


@pytest.mark.parametrize(
    "window, message",
    [
        (dict(kv_window=8), "kv_window must be at least a page (16 tokens), got 8"),
        (dict(sink_tokens=4), "sink_tokens (4) needs a kv_window"),
        (dict(kv_window=0), "kv_window must be an integer in 1.."),
        (dict(kv_window=32, sink_tokens=-1), "sink_tokens must be an integer in 0..1024"),
        (dict(kv_window=1 << 20), "needs up to"),
    ],
)
def test_impossible_windows_are_refused_naming_the_value(short, window, message):
    engine = Engine(short, page_size=16, kv_cache_bytes=1 << 20)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.add_request(PROMPT, greedy(4, **window))
    check_pages(engine)


def test_the_window_arithmetic():
    w = KVWindow(sinks=4, window=64, page_size=16)
    assert (w.sink_pages, w.tail, w.chunk, w.shift) == (1, 12, 16, 0)
    assert w.next_start(79) == 0 and w.next_start(80) == 16 and w.next_start(200) == 128
    w.start, w.private = 128, 1
    assert w.shift == 112 and w.next_start(200) == 128 and w.next_start(208) == 144
    assert KVWindow(0, 32, 16).next_start(48) == 16  # no sinks: nothing holds the first page
    assert KVWindow(20, 32, 16).next_start(63) == 0 and KVWindow(20, 32, 16).next_start(64) == 32  # two sink pages
