"""Multi-head attention with grouped KV heads (Llama, Qwen2/3, Mistral, Mixtral, Gemma 2/3, gpt-oss):
per-head q/k norms where the family has them (Qwen3, Gemma 3), the family's query scaling, and
sliding windows (a mask in the kernels), gpt-oss's attention sinks and Gemma 2's soft-capped scores."""

from __future__ import annotations

import torch
from torch import nn

from radixrt.cache import KVPool
from radixrt.model.batch import ForwardBatch
from radixrt.model.layers import RMSNorm, Rotary, paged_attention
from radixrt.model.spec import Arch


class Attention(nn.Module):
    def __init__(self, arch: Arch, layer: int) -> None:
        super().__init__()
        self.layer, self.heads, self.kv_heads, self.head_dim = layer, arch.heads, arch.kv_heads, arch.head_dim
        self.scale, self.window, self.softcap = arch.attn_scale, arch.windows[layer] or 0, arch.attn_softcap or 0.0
        hidden, bias = arch.hidden, arch.qkv_bias
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=arch.o_bias)
        if arch.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, arch.eps, arch.norm_offset)
            self.k_norm = RMSNorm(self.head_dim, arch.eps, arch.norm_offset)
        else:
            self.q_norm = self.k_norm = None
        self.sinks = nn.Parameter(torch.zeros(self.heads)) if arch.sinks else None

    def forward(self, x: torch.Tensor, rope: Rotary, cos_sin: tuple, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope.rotate(q, *cos_sin), rope.rotate(k, *cos_sin)
        sinks = None if self.sinks is None else self.sinks.float()
        out = paged_attention(q, k, v, batch, pool, self.layer, self.scale, self.window, sinks, self.softcap)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))
