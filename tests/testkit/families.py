"""Tiny random checkpoints of every model family radixrt runs beyond Llama, built with
transformers (``from_config``, ``save_pretrained``, fixed seeds), for the model and engine tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    DeepseekV2Config,
    DeepseekV3Config,
    Gemma2Config,
    Gemma3TextConfig,
    GptOssConfig,
    MistralConfig,
    MixtralConfig,
    PreTrainedModel,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6)
DEEPSEEK = dict(
    SMALL,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=32,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    first_k_dense_replace=1,
)
CONFIGS = {
    "gemma2": Gemma2Config(  # soft-capped attention scores and logits, every other layer windowed
        **{**SMALL, "num_hidden_layers": 3},
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,
        attn_logit_softcapping=1.5,  # low enough that the cap bends these scores
        final_logit_softcapping=3.0,
    ),
    "gemma3_text": Gemma3TextConfig(
        **{**SMALL, "num_hidden_layers": 3},
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,  # shorter than the prompts: local layers see their last 8 tokens
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=3.0,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    ),
    "qwen3": Qwen3Config(  # the second layer windowed (use_sliding_window from max_window_layers on)
        **SMALL,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
    ),
    "gpt_oss": GptOssConfig(  # sinks, alternating windows, biased experts with the clamped SwiGLU
        **{**SMALL, "max_position_embeddings": 4096},
        intermediate_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=8,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 1024,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
        },
    ),
    "mistral": MistralConfig(  # every layer windowed, shorter than the prompts
        **SMALL, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, sliding_window=8
    ),
    "qwen3_moe": Qwen3MoeConfig(
        **SMALL,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        mlp_only_layers=[1],  # one dense layer among the sparse
    ),
    "qwen2_moe": Qwen2MoeConfig(  # q/k/v biases, a gated shared expert
        **SMALL,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=4,
        num_experts_per_tok=2,
    ),
    "mixtral": MixtralConfig(
        **SMALL, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4
    ),
    "deepseek_v2": DeepseekV2Config(
        **DEEPSEEK, q_lora_rank=None, n_shared_experts=2, topk_method="group_limited_greedy", n_group=4, topk_group=2
    ),
    "deepseek_v3": DeepseekV3Config(
        **{**DEEPSEEK, "max_position_embeddings": 1024},
        q_lora_rank=48,
        n_group=2,
        topk_group=1,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 256,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    ),
}


def build(family: str, path: Path) -> PreTrainedModel:
    """The family's checkpoint saved at ``path``, and transformers' model of it. Weights are wider
    than the default init so logits and routing are decisive (no near-ties for argmax or top-k to
    flip on rounding); norms, gpt-oss's sinks and DeepSeek-V3's routing bias are random too."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[family], dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("sinks"):
                p.normal_(0, 1.0)
            else:
                routers = ("gate" in name and "proj" not in name) or "router" in name
                p.normal_(0, 0.5 if routers else 0.1)
        for name, b in hf.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
    hf.save_pretrained(path)
    return hf.eval()
