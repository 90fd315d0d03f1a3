"""DeepSeek's multi-head latent attention (V2, V3) over a latent KV cache.

Each token caches one vector: its compressed latent ``c`` (``kv_lora_rank`` channels, after
``kv_a_layernorm``) and then its RoPE key ``k_pe`` (``rope`` channels, shared by all heads) -- 576
channels on DeepSeek-V3 where full heads would take 128 x (192 + 128) = 40,960. Per head, the key
is ``[W_UK c, k_pe]`` and the value ``W_UV c`` (``kv_b_proj`` holds ``W_UK`` and ``W_UV``), so

    q . k = (W_UK^T q_nope) . c + q_pe . k_pe        out = W_UV (sum_t p_t c_t)

and attention runs on the latent directly, every head against the one cached "head": the query
becomes ``[W_UK^T q_nope, q_pe]`` (576 channels), the value is the latent itself (the first 512
channels of the cached row: the pool stores no separate V), and ``W_UV`` is applied to the output.
This absorbed form serves decode and any extend over a cached prefix: the same pages for the radix
cache, retraction and the tiers as any model. A batch of fresh prompts (no cached prefix) is
computed decompressed instead, as DeepSeek and SGLang do: its latents go to the pool all the same,
and attention runs on per-head K ``[W_UK c, k_pe]`` (192 channels on V3) and V ``W_UV c`` (128)
built from the new tokens alone -- a third of the absorbed form's 576/512 per head and key, which
is what counts when the prompt is long and nothing is cached.
"""

from __future__ import annotations

import torch
from torch import nn

from radixrt.cache import KVPool
from radixrt.kernels.attention import PagedKV, extend_attention
from radixrt.model.batch import ForwardBatch
from radixrt.model.layers import RMSNorm, Rotary, paged_attention, store_kv
from radixrt.model.spec import Arch


class LatentAttention(nn.Module):
    decompress_prefill = True
    """Fresh prompts decompressed (False runs them absorbed too: the tests compare the two)."""

    def __init__(self, arch: Arch, layer: int) -> None:
        super().__init__()
        lat = arch.latent
        self.layer, self.heads, self.lat, self.scale = layer, arch.heads, lat, arch.attn_scale
        qk_dim = lat.nope + lat.rope
        if lat.q_lora_rank is None:
            self.q_proj = nn.Linear(arch.hidden, self.heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(arch.hidden, lat.q_lora_rank, bias=lat.bias)
            self.q_a_layernorm = RMSNorm(lat.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(lat.q_lora_rank, self.heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(arch.hidden, lat.kv_lora_rank + lat.rope, bias=lat.bias)
        self.kv_a_layernorm = RMSNorm(lat.kv_lora_rank, 1e-6)
        self.kv_b_proj = nn.Linear(lat.kv_lora_rank, self.heads * (lat.nope + lat.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * lat.v_head_dim, arch.hidden, bias=lat.bias)

    def forward(self, x: torch.Tensor, rope: Rotary, cos_sin: tuple, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        lat, tokens = self.lat, x.shape[0]
        q = self.q_proj(x) if self.lat.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(tokens, self.heads, -1).split([lat.nope, lat.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([lat.kv_lora_rank, lat.rope], dim=-1)
        w = self.kv_b_proj.weight.view(self.heads, lat.nope + lat.v_head_dim, lat.kv_lora_rank)
        w_uk, w_uv = w[:, : lat.nope], w[:, lat.nope :]
        latent, q_pe = self.kv_a_layernorm(latent), rope.rotate(q_pe, *cos_sin)
        k_pe = rope.rotate(k_pe[:, None], *cos_sin)  # [tokens, 1, rope]
        cached = torch.cat([latent, k_pe[:, 0]], dim=-1)[:, None]  # the one vector a token caches
        if self.decompress_prefill and batch.max_prefix_len == 0 and not batch.decode:
            store_kv(cached, None, batch, pool, self.layer)
            k_nope, v = torch.einsum("tr,hcr->thc", latent, w).split([lat.nope, lat.v_head_dim], dim=-1)
            k = torch.cat([k_nope, k_pe.expand(-1, self.heads, -1)], dim=-1)
            out = extend_attention(
                torch.cat([q_nope, q_pe], dim=-1),
                k,
                v,
                self.no_prefix(batch, k, v),
                batch.qo_indptr,
                batch.prefix_lens,
                max_extend_len=batch.max_new_tokens,
                sm_scale=self.scale,
            )
        else:
            q = torch.cat([torch.einsum("thn,hnr->thr", q_nope, w_uk), q_pe], dim=-1)
            out = paged_attention(q, cached, cached[..., : lat.kv_lora_rank], batch, pool, self.layer, self.scale)
            out = torch.einsum("thr,hvr->thv", out, w_uv)
        return self.o_proj(out.reshape(tokens, self.heads * lat.v_head_dim))

    @staticmethod
    def no_prefix(batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor) -> PagedKV:
        """Per-head K/V pools of one page that nothing reads (every prefix is empty): what the
        extend kernel is given when a batch's attention needs only its new tokens."""
        heads = k.shape[1]
        k_pool, v_pool = k.new_zeros(1, 1, heads, k.shape[2]), v.new_zeros(1, 1, heads, v.shape[2])
        return PagedKV(k_pool, v_pool, batch.kv_indptr, batch.kv_indices)
