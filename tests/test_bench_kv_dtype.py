"""Fast checks of bench/bench_kv_dtype.py's parts that need no full model run: the kernel timing on
a tiny shape for every KV format, the greedy-agreement prefix, and the lockstep recorder on the
tiny model (every engine steps the same batch, one token a request a step)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_kv_dtype as bench  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402
from testkit.engines import tiny_llama  # noqa: E402

FORMATS = ["fp32", "bf16", "int8", "int4"] + (["fp8"] if hasattr(torch, "float8_e4m3fn") else [])


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory) -> str:
    """A 2-layer random Llama with head_dim 32 (two int4 groups a head)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny32"), head_dim=32, context=256, vocab_size=128)


def test_kernel_timing_runs_every_format_and_compares_to_fp32_and_bf16():
    rows = bench.kernel_part(FORMATS, batch=2, context=48, repeats=1, device="cpu")
    assert {(r["op"], r["kv_dtype"]) for r in rows} == {(op, d) for op in ("decode", "extend") for d in FORMATS}
    for r in rows:
        assert r["ms"] > 0 and r["tok_per_s"] > 0
        assert r["vs_bf16"] is not None and r["vs_fp32"] is not None
    assert all(r["vs_fp32"] == 1.0 for r in rows if r["kv_dtype"] == "fp32")


def test_common_prefix():
    assert bench.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert bench.common_prefix([], [1]) == 0
    assert bench.common_prefix([7, 8], [7, 8]) == 2


@pytest.mark.parametrize("kv_dtype", ["int8", "int4"])
def test_lockstep_pairs_every_position_of_every_prompt(tiny32, kv_dtype):
    engines = {}
    for d in ("fp32", kv_dtype):
        e = Engine(tiny32, kv_dtype=d, chunk_size=1, page_size=16, kv_cache_bytes=1 << 22)
        e._bench_recorder = bench.Recorder(e)
        engines[d] = e
    prompts = [list(range(3 + i, 23 + i)) for i in range(3)]
    for e in engines.values():
        for i, p in enumerate(prompts):
            e.add_request(
                p, SamplingParams(max_new_tokens=2, temperature=0), request_id=f"r{i}", prompt_logprobs_from=1
            )
    seen = {d: set() for d in engines}

    def on_step(rows):
        assert rows["fp32"].keys() == rows[kv_dtype].keys()
        for d, got in rows.items():
            seen[d] |= set(got)

    finished, tokens = bench.lockstep(engines, on_step)
    every = {(f"r{i}", pos) for i, p in enumerate(prompts) for pos in range(len(p) + 1)}
    assert seen["fp32"] == seen[kv_dtype] == every  # each prompt position, then the first generated token
    for d in engines:
        assert all(len(finished[d][f"r{i}"].prompt_logprobs) == len(p) - 1 for i, p in enumerate(prompts))
        assert all(len(tokens[d][f"r{i}"]) == 2 for i in range(len(prompts)))
