"""Random parameters, prompts, aborts and poisoned logits thrown at one engine: each request is
refused with a ValueError when added or runs to an end; step() never raises; nothing leaks."""

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from radixrt import Engine, SamplingParams
from testkit.engines import TINY_VOCAB, check_pages

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(-3, 3),
    st.sampled_from([float("nan"), float("inf")]),
    st.text(max_size=2),
    st.lists(st.integers(-2, TINY_VOCAB + 1), max_size=3),
)
PLAUSIBLE = {
    "max_new_tokens": st.sampled_from(range(41)),
    "temperature": st.sampled_from([0, 1e-40, 1e-6, 0.7, 1.0, 2.0]),
    "top_k": st.integers(0, 50),
    "top_p": st.floats(0.05, 1),
    "min_p": st.floats(0, 0.5),
    "repetition_penalty": st.floats(0.5, 2),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
    "seed": st.integers(0, 2**31),
    "stop_token_ids": st.lists(st.integers(0, TINY_VOCAB - 1), max_size=3),
    "ignore_eos": st.booleans(),
    "logprobs": st.booleans(),
    "kv_window": st.sampled_from([None, 4, 8, 24]),  # pages of 4: windows slide, drop shared pages, retract
    "sink_tokens": st.sampled_from([0, 1, 4, 6]),
}


@st.composite
def params(draw) -> dict:
    """Mostly plausible values; now and then garbage, or an unknown key."""
    values = {}
    for key, plausible in PLAUSIBLE.items():
        if draw(st.booleans()):
            values[key] = draw(GARBAGE if draw(st.sampled_from(range(12))) == 11 else plausible)
    if draw(st.sampled_from(range(8))) == 7:
        values["bogus"] = 1
    return values


BAD_PROMPTS = st.one_of(st.lists(st.integers(-2, TINY_VOCAB), max_size=40), st.text(max_size=3), st.just([1] * 600))


@st.composite
def prompt(draw) -> list[int] | str:
    """Mostly token ids of the vocabulary; now and then a prompt to refuse."""
    if draw(st.sampled_from(range(6))) == 5:
        return draw(BAD_PROMPTS)
    length = draw(st.sampled_from(range(1, 81)))
    return draw(st.lists(st.integers(0, TINY_VOCAB - 1), min_size=length, max_size=length))


POISONED = st.sampled_from(range(6)).map(lambda i: i == 5)  # now and then a request whose logits are NaN
REQUEST = st.tuples(
    prompt(), params(), st.sampled_from([None, "a", "b"]), POISONED, st.sampled_from([0] * 24 + list(range(1, 13)))
)


@pytest.fixture(scope="module")
def engine(tiny):
    """A pool of 30 four-token pages, so that requests evict, retract and get clipped."""
    per_token = Engine(tiny, kv_cache_bytes=1 << 20).pool.bytes_per_token
    engine = Engine(tiny, page_size=4, kv_cache_bytes=120 * per_token, max_batch_tokens=64, chunk_size=16)
    engine.runner.logits_processors.append(poison)
    return engine


def poison(logits: torch.Tensor, requests) -> None:
    for row, req in enumerate(requests):
        if req.id.startswith("poisoned"):
            logits[row, 3] = float("nan")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(REQUEST, min_size=1, max_size=8))
def test_every_request_is_refused_or_ends(engine, requests):
    added, abort_at = {}, {}
    for i, (prompt, values, namespace, poisoned, abort_step) in enumerate(requests):
        values.setdefault("max_new_tokens", 24)
        rid = f"{'poisoned' if poisoned else 'plain'}-{i}"
        try:
            params = SamplingParams.from_dict(values)
            engine.add_request(prompt, params, request_id=rid, namespace=namespace)
        except ValueError as e:
            event(f"refused: {str(e).split(',')[0][:48]}")
            continue
        added[rid] = params
        if abort_step:
            abort_at[rid] = abort_step
    ended: dict[str, str] = {}
    for n in range(2000):
        for rid, at in abort_at.items():
            if at == n:
                engine.abort(rid)
        for out in engine.step():
            assert out.request_id not in ended
            if out.finished:
                ended[out.request_id] = out.finish_reason
        if not engine.has_work():
            break
    assert set(ended) == set(added)
    event(f"{len(added)} of {len(requests)} accepted")
    for reason in sorted(set(ended.values())):
        event(f"ended by {reason}")
    for rid, reason in ended.items():
        if rid.startswith("poisoned") and added[rid].max_new_tokens > 0:
            assert reason in ("error", "abort")
        else:
            assert reason in ("length", "stop", "abort")
    check_pages(engine)
