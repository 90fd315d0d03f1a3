"""Each model family against transformers' own implementation of it: a tiny random checkpoint per
family (``from_config``, ``save_pretrained``, fixed seeds), in float32. The prompt's logits match
within 1e-4 (relative norm), 32 greedy steps through the pool match ``generate``, prefix sharing
and chunked prefill give the one-pass logits, and a batch mixing long and short prompts agrees
with solo runs."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from radixrt.cache import KVPool, PageAllocator
from radixrt.model import SequenceChunk, build_batch, load_model
from testkit.families import CONFIGS, VOCAB, build

PAGE_SIZE = 4
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    return build(request.param, path), path


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_model(checkpoint[1]).model


def new_pool(model, pages=96):
    return KVPool(**model.kv_shape, page_size=PAGE_SIZE, dtype=torch.float32, num_pages=pages), PageAllocator(pages)


def forward(model, pool, chunks):
    with torch.no_grad():
        return model(build_batch(chunks, PAGE_SIZE), pool)


def pages_for(allocator, tokens):
    return allocator.alloc(-(-tokens // PAGE_SIZE))


def prompt(seed, n):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def prompt_logits(path, tokens) -> torch.Tensor:
    """Every position's logits of ``tokens``, one pass, from the checkpoint at ``path``."""
    model = load_model(path).model
    pool, allocator = new_pool(model)
    return forward(model, pool, [SequenceChunk(np.array(tokens), 0, pages_for(allocator, len(tokens)), 0)])


def reference_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0]


def test_prompt_logits_match_transformers(checkpoint, ours):
    hf, _ = checkpoint
    pool, allocator = new_pool(ours)
    prompts = [prompt(1, 37), prompt(2, 7)]
    chunks = [SequenceChunk(np.array(p), 0, pages_for(allocator, len(p)), 0) for p in prompts]
    expected = torch.cat([reference_logits(hf, p) for p in prompts])
    assert rel(forward(ours, pool, chunks), expected) < TOLERANCE


def test_greedy_steps_match_generate(checkpoint, ours):
    """32 tokens: a prefill, then one decode step at a time reading everything back through the pool."""
    hf, _ = checkpoint
    tokens, steps = prompt(3, 11), 32
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor([tokens]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0
        )[0, len(tokens) :].tolist()
    pool, allocator = new_pool(ours)
    pages = pages_for(allocator, len(tokens) + steps)
    got, new, cached = [], tokens, 0
    for _ in range(steps):
        logits = forward(ours, pool, [SequenceChunk(np.array(new), cached, pages)])
        cached += len(new)
        new = [int(logits[-1].argmax())]
        got += new
    assert got == expected


def test_prefix_sharing_and_chunked_prefill_match_one_pass(checkpoint, ours):
    """A prompt computed in three chunks, each reading the earlier ones through the pool; then a
    second prompt sharing its first 16 tokens' pages (as the radix cache hands them out) computes
    only its own tail: both give the one-pass logits."""
    hf, _ = checkpoint
    pool, allocator = new_pool(ours)
    first = prompt(4, 30)
    pages = pages_for(allocator, len(first))
    parts = [
        forward(ours, pool, [SequenceChunk(np.array(first[a:b]), a, pages, 0)]) for a, b in ((0, 9), (9, 22), (22, 30))
    ]
    assert rel(torch.cat(parts), reference_logits(hf, first)) < TOLERANCE
    second = first[:16] + prompt(5, 10)
    own = np.concatenate([pages[:4], pages_for(allocator, len(second) - 16)])
    tail = forward(ours, pool, [SequenceChunk(np.array(second[16:]), 16, own, 0)])
    assert rel(tail, reference_logits(hf, second)[16:]) < TOLERANCE


def test_mixed_batch_matches_solo_runs(checkpoint, ours):
    """Long, short and medium prompts in one extend batch, then a decode step of all three
    together: each sequence's logits equal its run alone."""
    pool, allocator = new_pool(ours)
    prompts = [prompt(6, 41), prompt(7, 3), prompt(8, 17)]
    pages = [pages_for(allocator, len(p) + 1) for p in prompts]
    batch = forward(ours, pool, [SequenceChunk(np.array(p), 0, pg) for p, pg in zip(prompts, pages)])
    nxt = [int(t) for t in batch.argmax(-1)]
    decode = forward(ours, pool, [SequenceChunk(np.array([t]), len(p), pg) for t, p, pg in zip(nxt, prompts, pages)])
    for i, p in enumerate(prompts):
        solo_pool, solo_alloc = new_pool(ours)
        solo_pages = pages_for(solo_alloc, len(p) + 1)
        solo = forward(ours, solo_pool, [SequenceChunk(np.array(p), 0, solo_pages)])
        solo_next = forward(ours, solo_pool, [SequenceChunk(np.array([nxt[i]]), len(p), solo_pages)])
        assert rel(batch[i : i + 1], solo) < TOLERANCE
        assert rel(decode[i : i + 1], solo_next) < TOLERANCE


def test_a_sharded_checkpoint_loads_whole(tmp_path):
    """Several safetensors shards and their index: the same logits as the single file."""
    hf = build("deepseek_v3", tmp_path / "one")
    hf.save_pretrained(tmp_path / "shards", max_shard_size="100KB")
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 1
    tokens = prompt(9, 12)
    assert torch.equal(prompt_logits(tmp_path / "one", tokens), prompt_logits(tmp_path / "shards", tokens))


def test_an_unsupported_model_type_lists_the_supported_ones(tmp_path):
    build("qwen3", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model type 'gpt2' is not supported \(supported: deepseek_v2, deepseek_v3, "):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("family", "field", "value", "message"),
    [
        ("gemma3_text", "use_bidirectional_attention", True, "attention here is causal"),
        ("deepseek_v3", "topk_method", "greedy", "topk_method='greedy' is not supported"),
        ("deepseek_v2", "scoring_func", "sigmoid", "deepseek_v2 routes with softmax scores"),
        ("qwen3", "hidden_act", "relu", "hidden activation 'relu' is not supported"),
        ("mixtral", "quantization_config", {"quant_method": "fp8"}, r"quantized checkpoints \(fp8\) are not read"),
        ("qwen3", "rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}, "rescales with"),
    ],
)
def test_a_config_field_not_computed_is_named(tmp_path, family, field, value, message):
    """Rather than a silently wrong answer: the field, its value and why, at load."""
    build(family, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path)


def test_the_experts_fallback_equals_the_grouped_matmul():
    """Without torch's grouped GEMM: one matmul per expert's rows (and no expert left empty or
    overrun), the same products."""
    from radixrt.model import moe

    gen = torch.Generator().manual_seed(0)
    rows, weights = torch.randn(10, 16, generator=gen), torch.randn(4, 16, 8, generator=gen)
    ends = torch.tensor([3, 3, 7, 10], dtype=torch.int32)  # expert 1 has no rows
    grouped = moe.grouped_matmul(rows, weights, ends)
    expected = torch.cat([rows[0:3] @ weights[0], rows[3:7] @ weights[2], rows[7:10] @ weights[3]])
    torch.testing.assert_close(grouped, expected)
    saved, moe._GROUPED_MM = moe._GROUPED_MM, None
    try:
        torch.testing.assert_close(moe.grouped_matmul(rows, weights, ends), expected)
    finally:
        moe._GROUPED_MM = saved


@pytest.mark.parametrize("family", ["deepseek_v2", "deepseek_v3"])
def test_mla_fresh_prompts_decompressed_equal_absorbed(family, tmp_path, monkeypatch):
    """A batch of fresh prompts runs decompressed (per-head K/V from the new latents); absorbed, the
    same logits, and the same latents in the pool for what follows."""
    from radixrt.model.mla import LatentAttention

    build(family, tmp_path)
    model = load_model(tmp_path).model
    prompts = [prompt(10, 23), prompt(11, 6)]
    results = []
    for decompress in (True, False):
        monkeypatch.setattr(LatentAttention, "decompress_prefill", decompress)
        pool, allocator = new_pool(model)
        chunks = [SequenceChunk(np.array(p), 0, pages_for(allocator, len(p)), 0) for p in prompts]
        results.append((forward(model, pool, chunks), pool.k.clone()))
    (logits, pages), (absorbed, absorbed_pages) = results
    assert rel(logits, absorbed) < TOLERANCE
    torch.testing.assert_close(pages, absorbed_pages)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is installed on Linux only")
def test_through_the_triton_kernels(checkpoint, ours, monkeypatch):
    """The Triton kernels (interpreted on a CPU without a GPU: tests/conftest.py sets it) in the
    model: MLA's latent pool, Gemma's windows; a mixed extend and a decode step, as the CPU path."""
    from radixrt.kernels import attention

    prompts = [prompt(12, 19), prompt(13, 5)]
    results = []
    for backend in ("auto", "triton"):
        monkeypatch.setattr(attention, "ATTENTION", backend)
        pool, allocator = new_pool(ours)
        pages = [pages_for(allocator, len(p) + 1) for p in prompts]
        first = forward(ours, pool, [SequenceChunk(np.array(p), 0, pg, 0) for p, pg in zip(prompts, pages)])
        nxt = [SequenceChunk(np.array([7]), len(p), pg) for p, pg in zip(prompts, pages)]
        results.append(torch.cat([first, forward(ours, pool, nxt)]))
    assert rel(results[1], results[0]) < TOLERANCE


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_fused_expert_tensors_load_too(family, tmp_path):
    """transformers' own state dict fuses each layer's experts (``experts.gate_up_proj [E, 2 *
    inter, hidden]``, ``experts.down_proj``): what a converted GGUF file holds. It loads to the
    same logits as the per-expert tensors of ``save_pretrained``."""
    from safetensors.torch import save_file

    hf = build(family, tmp_path / "per_expert")
    assert any(name.endswith("experts.gate_up_proj") for name in hf.state_dict())
    (tmp_path / "fused").mkdir()
    save_file({n: t.contiguous() for n, t in hf.state_dict().items()}, tmp_path / "fused" / "model.safetensors")
    hf.config.save_pretrained(tmp_path / "fused")
    tokens = prompt(14, 15)
    logits = [prompt_logits(tmp_path / name, tokens) for name in ("per_expert", "fused")]
    assert torch.equal(*logits)
    assert rel(logits[1], reference_logits(hf, tokens)) < TOLERANCE


def test_bf16_weights_stay_as_close_as_transformers_bf16(checkpoint):
    """Served in bf16 (weights and pool): the logits of a prompt and of decode steps after it are
    no further from the float32 reference than transformers' own bf16 forward is, give or take
    half of that again (rounding falls differently in different kernels)."""
    hf, path = checkpoint
    model = load_model(path, dtype=torch.bfloat16).model
    pool = KVPool(**model.kv_shape, page_size=PAGE_SIZE, dtype=torch.bfloat16, num_pages=32)
    tokens = prompt(15, 30)
    pages = PageAllocator(32).alloc(-(-len(tokens) // PAGE_SIZE))
    ours = [forward(model, pool, [SequenceChunk(np.array(tokens[:24]), 0, pages, 0)])]
    ours += [forward(model, pool, [SequenceChunk(np.array([t]), 24 + i, pages)]) for i, t in enumerate(tokens[24:])]
    exact = reference_logits(hf, tokens)
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)(torch.tensor([tokens])).logits[0]
    assert rel(torch.cat(ours), exact) < 1.5 * rel(theirs.float(), exact) + 2e-3
