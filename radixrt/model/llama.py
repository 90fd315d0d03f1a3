"""A Llama-family decoder (Llama, Qwen2, Mistral, SmolLM) over the paged KV pool.

Parameter names are those of transformers' ``LlamaForCausalLM`` so a checkpoint's state dict
loads as it is. One forward runs a ragged batch of new tokens (prompt tokens after a cache hit, or
one decode token per sequence): each layer writes the new K/V into the pool at their slots and
attends through the page table with ``radixrt.kernels``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from radixrt.cache import KVPool
from radixrt.kernels.attention import PagedKV, decode_attention, extend_attention, write_kv
from radixrt.model.batch import ForwardBatch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in transformers' half-split convention; ``x [tokens, heads, dim]``, ``cos/sin [tokens, 1, dim]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer: int, qkv_bias: bool, o_bias: bool) -> None:
        super().__init__()
        self.layer = layer
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch, pool: KVPool
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q = rotate(self.q_proj(x).view(tokens, self.heads, self.head_dim), cos, sin)
        k = rotate(self.k_proj(x).view(tokens, self.kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        k_pool, v_pool = pool.k[self.layer], pool.v[self.layer]
        scales = pool.scales(self.layer)  # (None, None) unless the pool is quantized
        write_kv(k_pool, v_pool, batch.slots, k, v, *scales)
        kv = PagedKV(k_pool, v_pool, batch.kv_indptr, batch.kv_indices, *scales)
        if batch.max_new_tokens == 1 and tokens == batch.prefix_lens.shape[0]:  # one decode token per sequence
            out = decode_attention(q, kv, batch.prefix_lens + 1, max_seq_len=batch.max_seq_len)
        else:
            out = extend_attention(q, k, v, kv, batch.qo_indptr, batch.prefix_lens, max_extend_len=batch.max_new_tokens)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: PretrainedConfig, bias: bool) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"only SwiGLU (hidden_act='silu') MLPs are supported, got {config.hidden_act!r}")
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer: int, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer, qkv_bias, o_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, mlp_bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch, pool: KVPool
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, pool)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: PretrainedConfig, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, qkv_bias, o_bias, mlp_bias) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Biases are taken from the checkpoint (``has_bias``): Llama has none, Qwen2 has them on q/k/v."""

    def __init__(
        self, config: PretrainedConfig, qkv_bias: bool = False, o_bias: bool = False, mlp_bias: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config, qkv_bias, o_bias, mlp_bias)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = None if self.tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        rope = LlamaRotaryEmbedding(config)  # transformers' own RoPE parameters, scaling variants included
        self.register_buffer("inv_freq", rope.inv_freq.float(), persistent=False)
        self.rope_scaling = float(rope.attention_scaling)

    @property
    def head_dim(self) -> int:
        return self.model.layers[0].self_attn.head_dim

    @property
    def max_context(self) -> int:
        """The longest sequence computed exactly: the position limit, or a sliding attention
        window (Mistral, Qwen2 with ``use_sliding_window``) when shorter, since attention here
        always sees the whole sequence."""
        cfg = self.config
        window = getattr(cfg, "sliding_window", None)
        if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            window = None
        return min(cfg.max_position_embeddings, window or cfg.max_position_embeddings)

    def forward(self, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """Logits ``[len(batch.logit_rows), vocab]`` in float32."""
        x = self.model.embed_tokens(batch.input_ids)
        freqs = batch.positions.double()[:, None] * self.inv_freq.double()[None, :]  # exact past 2**24 too
        angles = torch.cat([freqs, freqs], dim=-1)
        cos = (angles.cos() * self.rope_scaling).to(x.dtype)[:, None]
        sin = (angles.sin() * self.rope_scaling).to(x.dtype)[:, None]
        for layer in self.model.layers:
            x = layer(x, cos, sin, batch, pool)
        h = self.model.norm(x[batch.logit_rows])
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return (h @ weight.T).float()
