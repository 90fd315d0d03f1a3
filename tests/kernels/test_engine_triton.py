"""The engine end to end through the Triton kernels (interpreted on CPU tensors without a GPU)
against the PyTorch CPU path: the same logits and the same greedy tokens, over chunked prefill,
ragged extends after a radix-cache hit, a batch mixing decode and extend rows, and pure decode;
with the model's float32 KV pool and with each other KV format."""

import os

import pytest
import torch

from radixrt import Engine, SamplingParams
from radixrt.kernels import attention, cpu
from radixrt.kernels import decode as triton_decode
from radixrt.kernels import extend as triton_extend
from radixrt.kernels import kv_write as triton_kv_write
from radixrt.kernels.attention import attention_backend
from testkit.engines import tiny_llama

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(),
    reason="Triton needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)",
)

VOCAB, SHARED, PAGE_SIZE, CHUNK = 113, 40, 4, 16
GREEDY = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
ATOL = {"auto": 1e-4, "bf16": 1e-4}
"""Logits may differ this much; 5e-3 for int8, fp8 and int4: the two paths' float error (1e-7) in
a layer's output tips the odd K/V value of the next layer to the neighbouring quantisation step
(one int8 value in 400k after a 45-token prompt; up to 1.4e-3 in the logits after a few steps),
against 1.5e-2 (int8) to 1.2e-1 (fp8) between a quantised pool and the float32 one."""


def build_tiny(tmp_path_factory, head_dim: int) -> str:
    """A 2-layer random Llama (4 query heads of ``head_dim``, GQA 2) as tests/engine/conftest.py
    builds it, with weights 5x larger than the default init: sharper attention, so that a kernel
    reading a wrong token or mis-scaling its softmax moves the logits by 1e-3 or more, not 1e-5."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"), head_dim, vocab_size=VOCAB, initializer_range=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return build_tiny(tmp_path_factory, 16)


@pytest.fixture(scope="module")
def tiny_dim32(tmp_path_factory) -> str:
    """head_dim 32: int4 rows of two 16-channel groups."""
    return build_tiny(tmp_path_factory, 32)


def run_scenario(model: str, device: str, kv_dtype: str) -> dict:
    """One request prefilled in chunks (extends over its own earlier chunks) then decoded; then
    three sharing its first SHARED tokens through the cache, with own tails of 3, 9 and 20 tokens:
    a ragged extend over cached prefix pages, then a step where two decode while the third
    finishes its prompt, then pure decode steps. Returns every sampled row's logits, step by step,
    the later prompts' logprobs and every request's tokens."""
    engine = Engine(
        model,
        page_size=PAGE_SIZE,
        chunk_size=CHUNK,
        kv_cache_bytes=1 << 20,
        device=device,
        dtype=torch.float32,
        kv_dtype=kv_dtype,
    )
    steps = []
    engine.runner.logits_processors.append(
        lambda logits, reqs: steps.append(([r.id for r in reqs], logits.cpu().clone()))
    )
    g = torch.Generator().manual_seed(0)
    head = torch.randint(0, VOCAB, (SHARED,), generator=g).tolist()
    first = engine.generate(head + torch.randint(0, VOCAB, (5,), generator=g).tolist(), GREEDY)
    ids = [
        engine.add_request(
            head + torch.randint(0, VOCAB, (own,), generator=g).tolist(), GREEDY, prompt_logprobs_from=SHARED + 1
        )
        for own in (3, 9, 20)
    ]
    outputs = {rid: [] for rid in ids}
    while engine.has_work():
        for out in engine.step():
            outputs[out.request_id].append(out)
    last = [outs[-1] for outs in outputs.values()]
    assert all(o.finish_reason == "length" and o.cached_tokens == SHARED for o in last), last
    return {
        "steps": steps,
        "tokens": [first.token_ids] + [[t for o in outs for t in o.token_ids] for outs in outputs.values()],
        "prompt_logprobs": [o.prompt_logprobs for o in last],
    }


def count_calls(monkeypatch, modules, name: str) -> dict:
    """Count the calls of ``name`` in each of ``modules`` (looked up at call time by the dispatcher)."""
    calls = {}
    for module in modules:
        impl = getattr(module, name)

        def counted(*args, _impl=impl, _key=module.__name__, **kwargs):
            calls[_key] = calls.get(_key, 0) + 1
            return _impl(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("kv_dtype", ["auto", "bf16", "fp8", "int8", "int4"])
def test_engine_through_triton_matches_cpu_path(kv_dtype, request, monkeypatch):
    model = request.getfixturevalue("tiny_dim32" if kv_dtype == "int4" else "tiny")
    calls = {}
    for name, module in (
        ("decode_attention", triton_decode),
        ("extend_attention", triton_extend),
        ("write_kv", triton_kv_write),
    ):
        calls[name] = count_calls(monkeypatch, [module, cpu], name)

    monkeypatch.setattr(attention, "ATTENTION", "auto")
    expected = run_scenario(model, "cpu", kv_dtype)
    assert all(set(c) == {"radixrt.kernels.cpu"} for c in calls.values()), calls
    for c in calls.values():
        c.clear()
    monkeypatch.setattr(attention, "ATTENTION", "triton")
    got = run_scenario(model, "cpu" if INTERPRET else "cuda", kv_dtype)
    assert all(set(c) == {"radixrt.kernels." + m} for c, m in zip(calls.values(), ("decode", "extend", "kv_write"))), (
        calls
    )

    assert [ids for ids, _ in got["steps"]] == [ids for ids, _ in expected["steps"]]
    atol = ATOL.get(kv_dtype, 5e-3)
    for i, ((ids, a), (_, b)) in enumerate(zip(got["steps"], expected["steps"])):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m, i=i, ids=ids: f"step {i} ({ids}): {m}")
    for a, b in zip(got["prompt_logprobs"], expected["prompt_logprobs"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=atol, rtol=0)
    assert got["tokens"] == expected["tokens"]


def test_attention_backend_is_validated(monkeypatch):
    monkeypatch.delenv("RADIXRT_ATTENTION", raising=False)
    assert attention_backend() == "auto"
    monkeypatch.setenv("RADIXRT_ATTENTION", " Triton ")
    assert attention_backend() == "triton"
    monkeypatch.setenv("RADIXRT_ATTENTION", "torch")
    with pytest.raises(ValueError, match="RADIXRT_ATTENTION must be one of auto, triton, got 'torch'"):
        attention_backend()
