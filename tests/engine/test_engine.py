"""The engine on tiny random checkpoints (fast) and on the default model."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from radixrt import Engine, SamplingParams
from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.output_text import OutputText
from radixrt.model import ModelNotFoundError
from radixrt.outputs import RequestFailed
from testkit.engines import TINY_VOCAB, check_pages, prompts, run_to_end

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("page_size, chunk_size", [(1, 1024), (16, 1024), (16, 7), (1, 5)])
def test_prefix_reuse_is_exact(tiny, page_size, chunk_size):
    """A request that shares a prefix with a finished one computes only its new tokens and
    generates what it would with the cache off."""
    first, second = prompts(2, shared=70, own=9)
    cached = Engine(tiny, page_size=page_size, chunk_size=chunk_size, kv_cache_bytes=4 << 20)
    uncached = Engine(tiny, page_size=page_size, chunk_size=chunk_size, kv_cache_bytes=4 << 20, enable_cache=False)
    cached.generate(first, GREEDY)
    before = cached.stats()["computed_tokens"]
    out = cached.generate(second, GREEDY)
    aligned_shared = 70 // page_size * page_size
    assert out.cached_tokens == aligned_shared
    assert cached.stats()["computed_tokens"] - before == len(second) - aligned_shared
    assert out.token_ids == uncached.generate(second, GREEDY).token_ids
    check_pages(cached)
    check_pages(uncached)


def test_concurrent_requests_share_and_match_sequential(tiny):
    batch = prompts(6, shared=40, own=5, seed=1)
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20)
    together = [o.token_ids for o in engine.generate(batch, GREEDY)]
    alone = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20, enable_cache=False)
    assert together == [alone.generate(p, GREEDY).token_ids for p in batch]
    check_pages(engine)


@pytest.mark.parametrize("namespaces", [(None,), ("alice", "bob")])
def test_memory_pressure_retracts_and_finishes_everything(tiny, namespaces):
    """50 concurrent requests (in one or two namespaces) on a pool sized for about 5 finish with
    the outputs of an unconstrained run, and no page leaks."""
    batch = prompts(50, shared=24, own=20, seed=2)
    params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    roomy = Engine(tiny, page_size=4, kv_cache_bytes=8 << 20)
    per_token = roomy.pool.bytes_per_token
    tight = Engine(tiny, page_size=4, kv_cache_bytes=5 * (44 + 20) * per_token, max_batch_tokens=256)
    expected = [o.token_ids for o in roomy.generate(batch, params)]
    ids = [tight.add_request(p, params, namespace=namespaces[i % len(namespaces)]) for i, p in enumerate(batch)]
    outputs = run_to_end(tight)
    assert [sum((o.token_ids for o in outputs[rid]), []) for rid in ids] == expected
    assert all(outputs[rid][-1].finish_reason == "length" for rid in ids)
    assert tight.stats()["retractions"] > 0
    assert set(tight.cache.namespaces()) <= {None, *namespaces}
    check_pages(tight)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], None, "empty"),
        ([1] * 600, None, "context is 512"),
        ([5, TINY_VOCAB], None, "outside the vocabulary"),
        ([5], SamplingParams(temperature=-1), "temperature"),
        ([5], SamplingParams(top_p=0), "top_p"),
        ([5], SamplingParams(top_p=1.5), "top_p"),
        ([5], SamplingParams(max_new_tokens=-1), "max_new_tokens"),
        ([5], SamplingParams(max_new_tokens=True), "max_new_tokens"),
        ([5], SamplingParams(stop_token_ids=5), "stop_token_ids"),
        ([5], SamplingParams(stop="END"), "tokenizer"),
        ([5, True], None, "sequence of integer token ids"),
        ("text", None, "no tokenizer"),
    ],
)
def test_bad_input_is_refused_and_the_engine_goes_on(tiny, prompt, params, message):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    assert len(engine.generate([1, 2, 3], GREEDY).token_ids) == 12
    check_pages(engine)


def test_a_prompt_larger_than_the_pool_is_refused_and_max_new_tokens_is_clipped_to_it(tiny):
    """Rule: a prompt must fit the KV pool; max_new_tokens is clipped to the room left after it,
    so a long request ends with "length" instead of pushing everyone out and failing."""
    per_token = Engine(tiny, kv_cache_bytes=4 << 20).pool.bytes_per_token
    tiny_pool = Engine(tiny, page_size=4, kv_cache_bytes=100 * per_token)
    assert tiny_pool.pool.num_tokens == 100
    with pytest.raises(ValueError, match="KV cache holds 100"):
        tiny_pool.add_request(list(range(100)), GREEDY)
    others = [
        tiny_pool.add_request(p, SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True))
        for p in prompts(2, 4, 4)
    ]
    long = tiny_pool.add_request(list(range(60)), SamplingParams(max_new_tokens=10_000, temperature=0, ignore_eos=True))
    outputs = run_to_end(tiny_pool)
    assert sum(len(o.token_ids) for o in outputs[long]) == 100 - 60 and outputs[long][-1].finish_reason == "length"
    assert all(outputs[rid][-1].finish_reason == "length" for rid in others)
    check_pages(tiny_pool)


def test_tiny_temperatures_are_greedy(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    greedy = engine.generate([3, 4, 5], GREEDY)
    for t in (1e-40, 1e-7):
        out = engine.generate(
            [3, 4, 5], SamplingParams(max_new_tokens=12, temperature=t, ignore_eos=True, logprobs=True)
        )
        assert out.finish_reason == "length" and out.token_ids == greedy.token_ids
        assert all(np.isfinite(out.logprobs))
    check_pages(engine)


def nan_for(request_ids: set[str]):
    """A logits processor that poisons the rows of some requests, as a broken model would."""

    def processor(logits: torch.Tensor, requests) -> None:
        for row, req in enumerate(requests):
            if req.id in request_ids:
                logits[row] = float("nan")

    return processor


def test_a_bad_request_fails_alone(tiny):
    """NaN logits fail their request (its pages back, an error naming the cause); the request
    beside it finishes as if alone, and step() never raises."""
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    alone = engine.generate(prompts(1, 30, 5, seed=3)[0], GREEDY).token_ids
    engine.runner.logits_processors.append(nan_for({"bad"}))
    good = engine.add_request(prompts(1, 30, 5, seed=3)[0], GREEDY)
    engine.add_request(prompts(1, 30, 5, seed=4)[0], GREEDY, request_id="bad")
    outputs = run_to_end(engine)
    assert outputs["bad"][-1].finish_reason == "error" and "not finite" in outputs["bad"][-1].error
    assert sum((o.token_ids for o in outputs[good]), []) == alone
    assert engine.stats()["failed_requests"] == 1
    check_pages(engine)


def test_a_failed_request_raises_from_stream(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    engine.runner.logits_processors.append(lambda logits, requests: logits.fill_(float("nan")))
    with pytest.raises(RequestFailed, match="not finite"):
        list(engine.stream([1, 2, 3], GREEDY))
    check_pages(engine)


def test_a_failed_forward_fails_its_batch_and_the_engine_goes_on(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    expected = engine.generate([7, 8, 9], GREEDY).token_ids
    calls = 0

    def broken_once(logits, requests):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("CUDA out of memory")

    engine.runner.logits_processors.append(broken_once)
    ids = [engine.add_request(p, GREEDY) for p in prompts(3, 10, 3, seed=5)]
    outputs = run_to_end(engine)
    assert all(outputs[rid][-1].finish_reason == "error" and "out of memory" in outputs[rid][-1].error for rid in ids)
    assert all(sum(len(o.token_ids) for o in outputs[rid]) == 2 for rid in ids)  # two steps went well
    check_pages(engine)
    assert engine.generate([7, 8, 9], GREEDY).token_ids == expected


def test_step_reports_every_request_once_and_forgets_it(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    params = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True, logprobs=True)
    ids = [engine.add_request(p, params, request_id=f"r{i}") for i, p in enumerate(prompts(3, 8, 4))]
    outputs = run_to_end(engine)
    for rid in ids:
        outs = outputs[rid]
        assert [o.finished for o in outs] == [False] * 4 + [True]
        assert all(len(o.token_ids) == len(o.logprobs) == len(o.token_times) == 1 for o in outs)
        assert outs[-1].prompt_tokens == 12 and outs[-1].text_token_count == 5
        assert all(lp <= 0 for o in outs for lp in o.logprobs) and any(lp < 0 for o in outs for lp in o.logprobs)
    assert not engine.requests
    engine.add_request([1, 2], params, request_id="r0")  # the id is free again
    run_to_end(engine)
    check_pages(engine)


def test_drivers_never_lose_another_callers_outputs(tiny):
    """A request added by hand keeps all its outputs for step() while generate() drives its own."""
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    mine, theirs = prompts(2, 6, 6, seed=6)
    expected = engine.generate(mine, GREEDY).token_ids
    rid = engine.add_request(mine, GREEDY)
    engine.generate(theirs, SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))
    got = run_to_end(engine)[rid]
    assert sum((o.token_ids for o in got), []) == expected and got[-1].finished
    check_pages(engine)


def test_abort_frees_everything_and_reports(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    rid = engine.add_request(prompts(1, 30, 3)[0], SamplingParams(max_new_tokens=100, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.abort(rid) and not engine.abort(rid)
    assert [o.finish_reason for o in engine.step()] == ["abort"]
    check_pages(engine)


def test_arrival_time_dates_the_request(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    rid = engine.add_request([1, 2, 3], GREEDY, arrival_time=0.0)
    out = run_to_end(engine)[rid]
    assert out[0].token_times[0] > 1.0  # latency counted from the given arrival, long ago on this clock


def test_sampling_is_seeded(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    params = SamplingParams(
        max_new_tokens=16, temperature=0.8, top_k=20, top_p=0.9, seed=7, ignore_eos=True, logprobs=True
    )
    a, b = engine.generate([3, 4, 5], params), engine.generate([3, 4, 5], params)
    assert a.token_ids == b.token_ids and len(a.logprobs) == 16 and all(-20 < lp <= 0 for lp in a.logprobs)
    c = engine.generate([[3, 4, 5], [9, 9, 9]], params)[0]  # with another request beside it
    assert c.token_ids == a.token_ids


def test_stop_token_ids_end_the_output(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    free = engine.generate([3, 4, 5], GREEDY).token_ids
    stop = free[4]
    out = engine.generate(
        [3, 4, 5], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=[stop])
    )
    assert out.finish_reason == "stop" and out.matched_stop == stop
    assert out.token_ids == free[: free.index(stop) + 1] and out.text_token_count == len(out.token_ids) - 1
    held = engine.generate(
        [3, 4, 5],
        SamplingParams(max_new_tokens=12, min_new_tokens=8, temperature=0, ignore_eos=True, stop_token_ids=[stop]),
    )
    first = free.index(stop)
    assert stop not in held.token_ids[:8] and held.token_ids[:first] == free[:first] and len(held.token_ids) >= 8
    with pytest.raises(ValueError, match="min_new_tokens"):
        engine.generate([3], SamplingParams(max_new_tokens=2, min_new_tokens=3))


def test_a_burst_sharing_an_uncached_prefix_computes_it_once(tiny):
    burst = prompts(4, shared=64, own=8, seed=3)
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20)
    outs = engine.generate(burst, GREEDY)
    assert engine.stats()["computed_tokens"] == 64 + 4 * 8
    assert [o.cached_tokens for o in outs] == [0, 64, 64, 64]


def test_score_choices_match_transformers(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    hf = AutoModelForCausalLM.from_pretrained(tiny).eval()
    prompt = prompts(1, shared=60, own=0, seed=4)[0]
    choices = [[7], [8, 9, 10], [11, 12]]
    scores = engine.score_choices(prompt, choices)
    for choice, score in zip(choices, scores):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([prompt + choice])).logits[0].float(), -1)
        expected = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(choice)]
        assert score.num_tokens == len(choice) and np.allclose(score.token_logprobs, expected, atol=1e-4)
    # the prompt once (which scores every first token at its end); the longer choices wait a step, then
    # match the whole prompt (60 tokens: whole pages) and compute their own tokens only
    assert engine.stats()["computed_tokens"] == len(prompt) + 3 + 2
    check_pages(engine)


@pytest.mark.parametrize(
    "choices, message",
    [
        ([[7], [TINY_VOCAB]], "outside the vocabulary"),
        ([[7], [1] * 490], "context is 512"),
        ([[7], []], "no empty choice"),
        ([], "at least one choice"),
        ([[7], "text"], "no tokenizer"),
    ],
)
def test_score_choices_refuses_bad_input(tiny, choices, message):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    with pytest.raises(ValueError, match=message):
        engine.score_choices(list(range(30)), choices)
    check_pages(engine)
    assert engine.score_choices(list(range(30)), [[1], [2]])[0].num_tokens == 1


def test_score_choices_runs_with_other_requests(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    alone = engine.score_choices([1, 2, 3, 4, 5], [[6], [7, 8]])
    rid = engine.add_request([9, 8, 7], GREEDY)
    first = engine.step()  # with overlap, its output comes with the next step
    beside = engine.score_choices([1, 2, 3, 4, 5], [[6], [7, 8]])
    assert np.allclose([s.logprob for s in beside], [s.logprob for s in alone], atol=1e-5)
    outputs = [o for o in first if o.request_id == rid] + run_to_end(engine)[rid]
    assert sum(len(o.token_ids) for o in outputs) == 12


def test_a_bad_prompt_in_a_batch_queues_nothing(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2, 3], []], GREEDY)
    check_pages(engine)


def test_namespaces_do_not_share_the_cache(tiny):
    """A tenant's prompt is never served from another tenant's cache entries."""
    prompt = prompts(1, shared=40, own=0, seed=5)[0]
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    assert engine.generate(prompt, GREEDY, namespace="alice").cached_tokens == 0
    assert engine.generate(prompt, GREEDY, namespace="bob").cached_tokens == 0
    assert (
        engine.generate(prompt, GREEDY, namespace="alice").cached_tokens == 36
    )  # whole pages of all but the last token
    check_pages(engine)


def test_unknown_model_path_says_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found.*config.json.*gguf"):
        Engine(str(tmp_path / "nope"))


def test_score_choices_under_memory_pressure_equal_a_roomy_run(tiny):
    """Choices scored while 30 requests fight over a small pool (prefills in chunks of 8, so a
    choice can be retracted halfway through its prompt) score as in a roomy pool."""
    prompt, choices = prompts(1, shared=60, own=0, seed=8)[0], [[7, 8], [9], [10, 11, 12]]
    roomy = [s.token_logprobs for s in Engine(tiny, page_size=4, kv_cache_bytes=4 << 20).score_choices(prompt, choices)]
    per_token = Engine(tiny, kv_cache_bytes=1 << 20).pool.bytes_per_token
    tight = Engine(tiny, page_size=4, kv_cache_bytes=160 * per_token, chunk_size=8, max_batch_tokens=64)
    for p in prompts(30, shared=8, own=16, seed=9):
        tight.add_request(p, SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True))
    tight.step()
    scored = [s.token_logprobs for s in tight.score_choices(prompt, choices)]
    assert np.allclose(np.concatenate(scored), np.concatenate(roomy), atol=1e-5)
    assert tight.stats()["retractions"] > 0
    run_to_end(tight)
    check_pages(tight)


class BrokenTokenizer:
    """A tokenizer whose decode fails, as one with a bug in a byte fallback would."""

    def decode(self, ids, skip_special_tokens=True):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_a_request_whose_text_fails_fails_alone(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    alone = engine.generate([4, 5, 6], GREEDY).token_ids
    good = engine.add_request([4, 5, 6], GREEDY)
    bad = engine.add_request([7, 8, 9], GREEDY)
    engine.requests[bad].output_text = OutputText(IncrementalDetokenizer(BrokenTokenizer()))
    outputs = run_to_end(engine)
    assert outputs[bad][-1].finish_reason == "error" and "invalid start byte" in outputs[bad][-1].error
    assert sum((o.token_ids for o in outputs[good]), []) == alone
    check_pages(engine)


def test_a_resumed_request_goes_on_as_if_uninterrupted(tiny):
    """A request moved from a lost worker comes back as prompt + output so far: with ``resumed``,
    penalties count that output as output, and greedy decoding goes on exactly as it would have."""
    engine = Engine(tiny)
    params = SamplingParams(max_new_tokens=24, temperature=0, frequency_penalty=1.5, presence_penalty=0.5)
    prompt = prompts(1, 0, 10)[0]
    whole = engine.generate(prompt, params)
    head, rest = whole.token_ids[:8], replace(params, max_new_tokens=16)

    def continue_from(resumed: int) -> list[int]:
        rid = engine.add_request(prompt + head, rest, resumed=resumed)
        return [t for out in run_to_end(engine)[rid] for t in out.token_ids]

    assert head + continue_from(8) == whole.token_ids
    assert head + continue_from(0) != whole.token_ids  # counted as prompt, the penalties see none of it
    with pytest.raises(ValueError, match="resumed must be"):
        engine.add_request(prompt, params, resumed=len(prompt))


def test_a_pin_keeps_its_prefix_cached_under_pressure_until_unpinned(tiny):
    """A pinned trunk survives a flood of other requests that evicts everything else; unpinned,
    it is evictable again, and nothing leaks."""
    per_token = Engine(tiny, page_size=4, kv_cache_bytes=1 << 20).pool.bytes_per_token
    engine = Engine(tiny, page_size=4, kv_cache_bytes=192 * per_token)  # the trunk and two of the flood
    trunk = prompts(1, shared=0, own=40, seed=7)[0]
    rid = engine.add_request(trunk, SamplingParams(max_new_tokens=0), pin=True)
    run_to_end(engine)
    assert engine.stats()["pins"] == 1 and engine.cache.prefix_length(trunk) == 40
    with pytest.raises(ValueError, match="already names a pin"):
        engine.add_request(trunk, SamplingParams(max_new_tokens=0), request_id=rid, pin=True)
    flood = prompts(30, shared=0, own=60, seed=8)
    engine.generate(flood, SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
    assert engine.cache.prefix_length(trunk) == 40
    out = engine.generate(trunk + [3, 4], SamplingParams(max_new_tokens=1, temperature=0))
    assert out.cached_tokens == 40
    assert not engine.flush_cache()  # a pin holds pages
    assert engine.unpin(rid) and not engine.unpin(rid)
    check_pages(engine)
    engine.generate(flood[:6], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
    assert engine.cache.prefix_length(trunk) < 40
    assert engine.flush_cache() and engine.cache.total_size() == 0
    check_pages(engine)


def test_pins_never_hold_more_than_half_the_pool(tiny):
    per_token = Engine(tiny, page_size=4, kv_cache_bytes=1 << 20).pool.bytes_per_token
    engine = Engine(tiny, page_size=4, kv_cache_bytes=100 * per_token)  # 25 pages
    trunks = prompts(3, shared=0, own=20, seed=11)  # 5 pages each: the third would pass 12.5
    ids = [engine.add_request(t, SamplingParams(max_new_tokens=0), pin=True) for t in trunks]
    run_to_end(engine)
    assert engine.stats()["pins"] == 2 and engine.stats()["pins_refused"] == 1
    assert [engine.unpin(rid) for rid in ids] == [True, True, False]
    check_pages(engine)


def test_a_failed_or_aborted_pin_holds_nothing(tiny):
    engine = Engine(tiny, page_size=4)
    rid = engine.add_request(prompts(1, 0, 30, seed=3)[0], SamplingParams(max_new_tokens=0), pin=True)
    engine.abort(rid)
    run_to_end(engine)
    assert not engine.pins and not engine.unpin(rid)
    check_pages(engine)


def test_top_logprobs_list_the_most_likely_tokens_of_each_step(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    out = engine.generate(
        [3, 4, 5], SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=3)
    )
    assert len(out.top_logprobs) == 6
    for token, logprob, top in zip(out.token_ids, out.logprobs, out.top_logprobs):
        assert len(top) == 3 and top[0][0] == token and top[0][1] == pytest.approx(logprob, abs=1e-5)
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    assert engine.generate([3, 4, 5], SamplingParams(max_new_tokens=2)).top_logprobs is None
    with pytest.raises(ValueError, match="top_logprobs"):
        engine.generate([3], SamplingParams(top_logprobs=21))
