"""A decoder-only language model over the paged KV pool, built from an :class:`Arch`.

Parameter names are the checkpoints' own (transformers'), so a state dict loads as it is once
:mod:`radixrt.model.families` has stacked the experts of a mixture-of-experts model. One forward
runs a ragged batch of new tokens (prompt tokens after a cache hit, or one decode token per
sequence): each layer writes the new K/V into the pool at their slots and attends through the page
table with ``radixrt.kernels``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers import PretrainedConfig

from radixrt.cache import KVPool
from radixrt.model.attention import Attention
from radixrt.model.batch import ForwardBatch
from radixrt.model.layers import GatedMLP, RMSNorm, Rotary
from radixrt.model.mla import LatentAttention
from radixrt.model.moe import SparseMoE
from radixrt.model.spec import Arch


class DecoderLayer(nn.Module):
    def __init__(self, arch: Arch, layer: int) -> None:
        super().__init__()
        norm = partial(RMSNorm, arch.hidden, arch.eps, arch.norm_offset)
        self.rope_kind, self.sandwich = arch.rope_kinds[layer], arch.sandwich_norms
        self.input_layernorm = norm()
        self.self_attn = (LatentAttention if arch.latent is not None else Attention)(arch, layer)
        self.post_attention_layernorm = norm()
        if self.sandwich:
            self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        if arch.moe_layers[layer]:
            self.mlp = SparseMoE(arch.hidden, arch.moe, arch.act)
        else:
            self.mlp = GatedMLP(arch.hidden, arch.intermediate, arch.act, arch.mlp_bias)

    def forward(self, x: torch.Tensor, rope: Rotary, cos_sin: tuple, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope, cos_sin, batch, pool)
        if self.sandwich:  # Gemma: attention and MLP outputs normed before the residual add
            x = x + self.post_attention_layernorm(h)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab, arch.hidden)
        self.layers = nn.ModuleList(DecoderLayer(arch, i) for i in range(arch.layers))
        self.norm = RMSNorm(arch.hidden, arch.eps, arch.norm_offset)


class CausalLM(nn.Module):
    def __init__(self, config: PretrainedConfig, arch: Arch, ropes: dict[str, Rotary]) -> None:
        super().__init__()
        self.config, self.arch = config, arch
        self.model = Backbone(arch)
        self.lm_head = None if arch.tied else nn.Linear(arch.hidden, arch.vocab, bias=False)
        self.ropes = nn.ModuleDict(ropes)

    @property
    def kv_shape(self) -> dict:
        """What :class:`~radixrt.cache.KVPool` needs to hold this model's K/V (with ``page_size``)."""
        return self.arch.kv_shape

    @property
    def max_context(self) -> int:
        """The longest sequence: the position limit (sliding windows are masks in the kernels)."""
        return self.arch.max_context

    def forward(self, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """Logits ``[len(batch.logit_rows), vocab]`` in float32."""
        x = self.model.embed_tokens(batch.input_ids)
        if self.arch.embed_scale is not None:
            x = x * torch.tensor(self.arch.embed_scale, dtype=x.dtype)  # rounded to the weights' dtype, as Gemma does
        angles = {kind: rope.angles(batch.positions, x.dtype) for kind, rope in self.ropes.items()}
        for layer in self.model.layers:
            x = layer(x, self.ropes[layer.rope_kind], angles[layer.rope_kind], batch, pool)
        h = self.model.norm(x[batch.logit_rows])
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = (h @ weight.T).float()
        cap = self.arch.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap
