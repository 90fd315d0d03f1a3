"""The KV cache in each format: a float dtype other than the model's, fp8 and int8 with a scale per
token and KV head, int4 with a scale and zero per 16 channels. The pool holds more tokens for the same
bytes, and prompts score close to full precision."""

import numpy as np
import pytest

from radixrt import Engine, SamplingParams
from testkit.engines import check_pages, prompts, tiny_llama

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

SCORE = SamplingParams(max_new_tokens=1, temperature=0)


def logprobs(engine: Engine, prompt: list[int]) -> np.ndarray:
    rid = engine.add_request(prompt, SCORE, prompt_logprobs_from=1)
    out = None
    while engine.has_work():
        for o in engine.step():
            if o.request_id == rid and o.finished:
                out = o
    return np.asarray(out.prompt_logprobs)


@pytest.mark.parametrize(
    "kv_dtype, more_tokens, tolerance",
    [("bf16", 2.0, 1e-3), ("fp16", 2.0, 2e-4), ("fp8", 3.19, 2e-2), ("int8", 3.19, 3e-3), ("int4", 5.3, 0.1)],
)
def test_each_kv_dtype_holds_more_tokens_and_scores_close_to_full_precision(tiny, kv_dtype, more_tokens, tolerance):
    """Float32 K/V of a head and token take 4 bytes a channel; the others what their formats say
    (fp8 and int8: 1 + a 4-byte scale per head; int4: 1/2 + 2 x 2-byte scale and zero per 16).
    Prompts advance 4 tokens a step, so that every position reads most of its context from the
    pool, as decoding does (a chunk's own tokens attend to each other at full precision)."""
    model = tiny
    full = Engine(model, page_size=16, kv_cache_bytes=1 << 20, chunk_size=4)
    packed = Engine(model, page_size=16, kv_cache_bytes=1 << 20, chunk_size=4, kv_dtype=kv_dtype)
    stats = packed.stats()
    assert stats["kv_dtype"] == kv_dtype and full.stats()["kv_dtype"] == "auto"
    assert stats["kv_bytes_per_token"] == packed.pool.bytes_per_token
    assert packed.pool.num_tokens >= more_tokens * full.pool.num_tokens
    differences = [np.abs(logprobs(full, p) - logprobs(packed, p)).max() for p in prompts(4, shared=0, own=60, seed=5)]
    assert 0 < max(differences) < tolerance, differences
    check_pages(packed)


def test_an_unknown_kv_dtype_is_refused_naming_the_choices(tiny):
    with pytest.raises(ValueError, match="kv_dtype 'int3' is not one of auto, bf16, fp16, fp32, fp8, int8, int4"):
        Engine(tiny, kv_dtype="int3")


def test_int4_refuses_a_head_dim_its_groups_cannot_divide(tmp_path):
    """The kernels take head_dim 24 (a multiple of 8); int4's groups of 16 channels cannot."""
    model = tiny_llama(tmp_path, head_dim=24)
    Engine(model, kv_cache_bytes=1 << 20)
    with pytest.raises(ValueError, match="int4 KV pool needs head_dim a multiple of 16.*got head_dim 24"):
        Engine(model, kv_cache_bytes=1 << 20, kv_dtype="int4")


def test_the_command_line_offers_every_kv_dtype_the_engine_takes():
    from radixrt import engine_args
    from radixrt.engine.model_runner import KV_DTYPES

    assert engine_args.KV_DTYPES == tuple(KV_DTYPES)
