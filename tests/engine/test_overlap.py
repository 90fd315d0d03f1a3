"""The overlap scheduler (step k+1 queued before step k's outputs are filed) and the decode graphs'
static buffers against plain stepping: the same outputs, token for token, and nothing leaked.

On a CPU the "device" is the host, so the overlap runs the very code path it runs on a GPU; the
decode graphs run their static buffers without capture (``use_decode_graphs(capture=False)``).
"""

import numpy as np
import pytest

from radixrt import Engine, SamplingParams
from testkit.engines import check_pages, prompts, run_to_end

GREEDY = dict(temperature=0, ignore_eos=True)


def workload() -> list[tuple[list[int], SamplingParams, dict]]:
    """Requests that end every way a request ends: length, max_new_tokens 0, stop tokens, a seed,
    penalties (whose sampling reads the output on the host), prompt logprobs and top logprobs."""
    ps = prompts(10, 24, 9, seed=3)
    plain = SamplingParams(max_new_tokens=9, **GREEDY)
    return [
        (ps[0], plain, {}),
        (ps[1], SamplingParams(max_new_tokens=1, **GREEDY), {}),
        (ps[2], SamplingParams(max_new_tokens=0, **GREEDY), {}),
        (ps[3], SamplingParams(max_new_tokens=14, seed=7, temperature=0.9, top_p=0.9), {}),
        (ps[4], SamplingParams(max_new_tokens=7, repetition_penalty=1.3, frequency_penalty=0.2, seed=1), {}),
        (ps[5], SamplingParams(max_new_tokens=6, logprobs=True, top_logprobs=3, **GREEDY), {}),
        (ps[6], plain, {"prompt_logprobs_from": 20}),
        (ps[7], SamplingParams(max_new_tokens=30, min_new_tokens=2, temperature=0, stop_token_ids=[5, 17, 40]), {}),
        (
            ps[8],
            SamplingParams(max_new_tokens=9, min_new_tokens=3, stop_token_ids=list(range(1, 113)), temperature=0),
            {},
        ),
        (ps[9], plain, {"score_next": (3, 4)}),
    ]


def run(tiny: str, overlap: bool, graphs: bool = False, stagger: bool = True, **engine_args) -> dict:
    """The workload's outputs, merged per request; requests arrive over the first steps."""
    engine = Engine(tiny, overlap=overlap, **{"page_size": 4, "kv_cache_bytes": 4 << 20, **engine_args})
    if graphs:
        engine.use_decode_graphs(8, capture=False)
    outputs: dict = {}
    pending = list(enumerate(workload()))
    for _ in range(10_000):
        for _ in range(2 if stagger else len(pending)):
            if pending:
                i, (prompt, params, extra) = pending.pop(0)
                engine.add_request(prompt, params, request_id=f"r{i}", **extra)
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        if not pending and not engine.has_work():
            break
    if graphs:
        engine.allocator.free(np.array([engine.runner.graphs.pad_page]))  # the padding's page, for check_pages
    check_pages(engine)
    return {rid: merged(outs) for rid, outs in outputs.items()}


def merged(outs: list) -> dict:
    assert all(not o.finished for o in outs[:-1]) and outs[-1].finished  # one stream, one last output
    last = outs[-1]
    logprobs = [x for o in outs if o.logprobs for x in o.logprobs]
    tops = [x for o in outs if o.top_logprobs for x in o.top_logprobs]
    return {
        "tokens": [t for o in outs for t in o.token_ids],
        "finish": (last.finish_reason, last.matched_stop, last.error),
        "logprobs": np.round(logprobs, 4).tolist(),
        "top": [[(i, round(v, 4)) for i, v in step] for step in tops],
        "prompt_logprobs": np.round(last.prompt_logprobs or [], 4).tolist(),
        "next_logprobs": np.round(last.next_logprobs or [], 4).tolist(),
    }


def test_overlap_gives_the_same_outputs_as_plain_stepping(tiny):
    plain = run(tiny, overlap=False)
    assert len(plain) == len(workload())
    assert plain["r2"]["tokens"] == [] and plain["r1"]["tokens"] != []
    assert plain["r8"]["finish"][0] == "stop" and plain["r8"]["tokens"][:3] == [0, 0, 0]  # held 3 tokens
    assert run(tiny, overlap=True) == plain


@pytest.mark.parametrize("overlap", [False, True])
def test_decode_graph_buffers_give_the_same_outputs(tiny, overlap):
    """Decode batches of up to 8 run through the graphs' static buffers, padded to a bucket; larger
    ones and prefill chunks run eagerly."""
    assert run(tiny, overlap=overlap, graphs=True, stagger=False) == run(tiny, overlap=False, stagger=False)


def test_overlap_under_memory_pressure_retracts_and_matches(tiny):
    """Retraction while a step is in flight: the retracted request's token still lands, and it
    waits until then to be admitted again."""
    per_token = Engine(tiny, kv_cache_bytes=1 << 20).pool.bytes_per_token
    tight = dict(kv_cache_bytes=30 * 4 * per_token, max_batch_tokens=64)
    plain, overlapped = run(tiny, overlap=False, **tight), run(tiny, overlap=True, **tight)
    assert overlapped == plain


def test_a_step_queued_ahead_never_reports_past_the_end(tiny):
    """With overlap, a request's next step is queued before its last token is known: a stop token
    or its max_new_tokens ends it exactly there, and what the extra step computed is let go."""
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20, overlap=True)
    first = engine.generate(prompts(1, 0, 12, seed=9)[0], SamplingParams(max_new_tokens=8, **GREEDY)).token_ids
    stop = first[4]
    cut = first[: first.index(stop) + 1]
    rid = engine.add_request(
        prompts(1, 0, 12, seed=9)[0], SamplingParams(max_new_tokens=8, stop_token_ids=[stop], temperature=0)
    )
    outputs = run_to_end(engine)[rid]
    assert [t for o in outputs for t in o.token_ids] == cut and outputs[-1].matched_stop == stop
    assert engine.stats()["overlap"] is True
    check_pages(engine)
    cached = engine.cache.total_size()
    assert engine.generate(prompts(1, 0, 12, seed=9)[0], SamplingParams(max_new_tokens=8, **GREEDY)).token_ids == first
    assert engine.cache.total_size() >= cached


def test_abort_with_a_step_in_flight_reports_what_is_known_and_frees_everything(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20, overlap=True)
    prompt = prompts(1, 0, 10, seed=4)[0]
    expected = engine.generate(prompt, SamplingParams(max_new_tokens=12, **GREEDY)).token_ids
    rid = engine.add_request(prompt, SamplingParams(max_new_tokens=12, **GREEDY))
    seen = [t for _ in range(4) for o in engine.step() for t in o.token_ids]
    assert engine._inflight  # step 4 runs while 3 steps' tokens came back
    assert engine.abort(rid)
    last = engine.step()
    assert [o.request_id for o in last] == [rid] and last[0].finish_reason == "abort"
    assert seen + last[0].token_ids == expected[: len(seen) + len(last[0].token_ids)]
    run_to_end(engine)
    check_pages(engine)
    assert engine.generate(prompt, SamplingParams(max_new_tokens=12, **GREEDY)).token_ids == expected


def test_the_options_reach_the_engine_and_the_workers(tiny):
    import argparse

    from radixrt.engine_args import add_engine_options, engine_kwargs, worker_flags

    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    defaults = engine_kwargs(parser.parse_args([]))
    assert (defaults["cuda_graph"], defaults["overlap"], defaults["cuda_graph_max_bs"]) == (None, None, 256)
    args = parser.parse_args(["--no-cuda-graph", "--no-overlap", "--cuda-graph-max-bs", "32", "--threads", "1"])
    assert parser.parse_args(worker_flags(args, threads=1)) == args  # serve passes them on unchanged
    kwargs = engine_kwargs(args)
    assert (kwargs["cuda_graph"], kwargs["overlap"], kwargs["cuda_graph_max_bs"]) == (False, False, 32)
    with pytest.raises(ValueError, match="--cuda-graph-max-bs takes a batch size >= 1, got 0"):
        engine_kwargs(parser.parse_args(["--cuda-graph-max-bs", "0"]))
    on_cpu = Engine(tiny, **{**kwargs, "kv_cache_bytes": 1 << 20})
    assert on_cpu.stats()["overlap"] is False and on_cpu.stats()["cuda_graph_max_bs"] == 0
    assert Engine(tiny, kv_cache_bytes=1 << 20).stats()["overlap"] is False  # a CPU never overlaps by default
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device; this engine runs on 'cpu'"):
        Engine(tiny, kv_cache_bytes=1 << 20, cuda_graph=True)
