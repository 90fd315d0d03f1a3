"""An int8 KV cache: a scale per token and KV head beside each page. The pool holds more tokens for
the same bytes, reading K/V back is close to full precision,."""

import numpy as np
import pytest

from radixrt import Engine, SamplingParams
from testkit.engines import check_pages, prompts

SCORE = SamplingParams(max_new_tokens=1, temperature=0)


def logprobs(engine: Engine, prompt: list[int]) -> np.ndarray:
    rid = engine.add_request(prompt, SCORE, prompt_logprobs_from=1)
    out = None
    while engine.has_work():
        for o in engine.step():
            if o.request_id == rid and o.finished:
                out = o
    return np.asarray(out.prompt_logprobs)


def test_int8_holds_more_tokens_and_scores_close_to_full_precision(tiny):
    full = Engine(tiny, page_size=16, kv_cache_bytes=1 << 20)
    int8 = Engine(tiny, page_size=16, kv_cache_bytes=1 << 20, kv_dtype="int8")
    assert int8.stats()["kv_dtype"] == "int8" and full.stats()["kv_dtype"] == "auto"
    assert int8.pool.num_tokens > 3 * full.pool.num_tokens  # float32 K/V: 64 bytes a head-token, int8: 16 + 4
    for p in prompts(4, shared=0, own=60, seed=5):
        a, b = logprobs(full, p), logprobs(int8, p)
        assert np.abs(a - b).max() < 0.05, np.abs(a - b).max()
    check_pages(int8)


def test_an_unknown_kv_dtype_is_refused_naming_the_choices(tiny):
    with pytest.raises(ValueError, match="kv_dtype 'int3' is not one of auto, bf16, fp16, fp32, fp8, int8, int4"):
        Engine(tiny, kv_dtype="int3")
