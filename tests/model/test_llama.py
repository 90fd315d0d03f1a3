"""The model against transformers' own forward of the same weights: tiny random checkpoints built
here, logits of every prompt position, in float32."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from radixrt.cache import KVPool, PageAllocator
from radixrt.model import SequenceChunk, build_batch, load_model

PAGE_SIZE = 4
SMALL = dict(vocab_size=97, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6)
CONFIGS = {
    "mha_tied": LlamaConfig(
        **SMALL, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True
    ),
    "gqa3_untied": LlamaConfig(
        **SMALL, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False
    ),
    "gqa4_llama3_rope": LlamaConfig(
        **SMALL,
        hidden_size=128,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "linear_rope_bias": LlamaConfig(
        **SMALL,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "qwen2_bias_yarn": Qwen2Config(
        **SMALL,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "mistral_window": MistralConfig(
        **SMALL, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=64
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[request.param], dtype=torch.float32)
    with torch.no_grad():  # random, not-too-small biases so that a dropped bias shows
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf.eval(), path


def run(model, pool, allocator, chunks_tokens, prefix_len=0, pages=None, first_logit=0):
    """Forward ``chunks_tokens`` (one list of tokens per sequence) after ``prefix_len`` cached."""
    chunks = []
    for tokens in chunks_tokens:
        seq_pages = pages if pages is not None else allocator.alloc(-(-(prefix_len + len(tokens)) // PAGE_SIZE))
        chunks.append(SequenceChunk(np.asarray(tokens), prefix_len, seq_pages, first_logit))
    with torch.no_grad():
        return model(build_batch(chunks, PAGE_SIZE), pool), chunks


def pool_for(model, pages=64):
    return KVPool(
        **model.kv_shape,
        page_size=PAGE_SIZE,
        dtype=torch.float32,
        num_pages=pages,
    ), PageAllocator(pages)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_prompt_logits_match_transformers(checkpoint):
    hf, path = checkpoint
    ours = load_model(path).model
    pool, allocator = pool_for(ours)
    prompts = [list(range(3, 40)), [5, 9, 2, 77, 1, 0, 96]]
    logits, _ = run(ours, pool, allocator, prompts)
    with torch.no_grad():
        expected = torch.cat([hf(torch.tensor([p])).logits[0] for p in prompts])
    assert rel(logits, expected) < 1e-4


def test_prefix_then_extend_then_decode_match(checkpoint):
    """The same logits when the prompt is computed in two chunks (the second reading the first
    through the pool) and when its last tokens are decoded one at a time."""
    hf, path = checkpoint
    ours = load_model(path).model
    pool, allocator = pool_for(ours)
    prompt = [int(t) for t in torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected = hf(torch.tensor([prompt])).logits[0]
    pages = allocator.alloc(-(-len(prompt) // PAGE_SIZE))
    first, _ = run(ours, pool, allocator, [prompt[:13]], 0, pages)
    second, _ = run(ours, pool, allocator, [prompt[13:25]], 13, pages)
    steps = [run(ours, pool, allocator, [[t]], 25 + i, pages)[0] for i, t in enumerate(prompt[25:])]
    assert rel(torch.cat([first, second, *steps]), expected) < 1e-4


def test_a_sliding_window_is_a_mask_not_a_bound(checkpoint):
    """Mistral's window is each layer's mask in the kernels (tests/model/test_families.py checks it
    past the window): the context is the position limit."""
    hf, path = checkpoint
    model = load_model(path).model
    window = hf.config.sliding_window if hf.config.model_type == "mistral" else None
    assert model.max_context == 256 and model.arch.windows == (window, window)


def test_unsupported_activation_is_named(tmp_path):
    cfg = LlamaConfig(**SMALL, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, hidden_act="gelu")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="SwiGLU"):
        load_model(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_match_transformers(dtype, tmp_path):
    """Weights and pool kept in bf16/fp16: the prompt's logits equal transformers' in the same
    dtype, and decoding its last tokens through the pool stays within half-precision rounding."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS["gqa3_untied"], dtype=torch.float32)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path, dtype=dtype).model
    pool = KVPool(num_layers=2, kv_heads=2, head_dim=16, page_size=PAGE_SIZE, dtype=dtype, num_pages=16)
    prompt = list(range(3, 40))
    with torch.no_grad():
        expected = hf.to(dtype)(torch.tensor([prompt])).logits[0].float()
    pages = PageAllocator(16).alloc(-(-len(prompt) // PAGE_SIZE))
    first, _ = run(ours, pool, None, [prompt[:30]], 0, pages)
    steps = [run(ours, pool, None, [[t]], 30 + i, pages)[0] for i, t in enumerate(prompt[30:])]
    assert rel(first, expected[:30]) < 1e-2
    assert rel(torch.cat(steps), expected[30:]) < 2e-2
