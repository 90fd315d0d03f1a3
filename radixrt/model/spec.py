"""What a decoder is made of, family-neutral: :mod:`radixrt.model.families` reads a checkpoint's
config into an :class:`Arch`, and the modules are built from it alone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Routing:
    """How a token picks its experts. ``scoring`` "softmax" (Mixtral, Qwen3-MoE, DeepSeek-V2),
    "sigmoid" (DeepSeek-V3, which chooses by score plus ``e_score_correction_bias`` and weighs by
    the score alone) or "topk_softmax" (gpt-oss: the top-k logits, then a softmax over them alone;
    its router has a bias); with ``groups``, experts are chosen from the best ``topk_groups`` groups only,
    a group scored by its best expert ("max", V2) or its best two ("top2", V3)."""

    experts: int
    top_k: int
    scoring: str = "softmax"
    normalize: bool = False  # the chosen weights divided by their sum
    scale: float = 1.0  # DeepSeek's routed_scaling_factor
    groups: int = 1
    topk_groups: int = 1
    group_score: str = "max"
    score_bias: bool = False
    router_bias: bool = False


@dataclass(frozen=True)
class MoE:
    routing: Routing
    intermediate: int  # each expert's
    shared_intermediate: int = 0  # the always-on shared experts', fused into one MLP (DeepSeek)
    shared_gate: bool = False  # Qwen2-MoE: the shared expert's output times sigmoid(a linear of x)
    expert_bias: bool = False  # gpt-oss: biases on each expert's projections
    swiglu_limit: float | None = None  # gpt-oss: gate and up clamped, act (up + 1) * gate * sigmoid(alpha gate)
    swiglu_alpha: float = 1.702


@dataclass(frozen=True)
class Latent:
    """DeepSeek's multi-head latent attention: ``kv_lora_rank`` latent channels cached per token
    with the ``rope`` channels of one shared RoPE key; queries through a ``q_lora_rank`` bottleneck
    (None: one projection, V2-Lite)."""

    q_lora_rank: int | None
    kv_lora_rank: int
    nope: int  # per-head query/key channels without RoPE
    rope: int
    v_head_dim: int
    bias: bool = False


@dataclass(frozen=True)
class Arch:
    model_type: str
    layers: int
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    act: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k (Qwen3, Gemma 3)
    norm_offset: float = 0.0  # Gemma: norms apply 1 + weight
    sandwich_norms: bool = False  # Gemma: norms after attention and after the MLP too
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden)
    attn_scale: float | None = None  # None: head_dim ** -0.5
    final_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    attn_softcap: float | None = None  # Gemma 2: attention scores soft-capped alike
    sinks: bool = False  # gpt-oss: a learned logit per head joins each softmax, with no value
    tied: bool = False
    latent: Latent | None = None
    moe: MoE | None = None
    moe_layers: tuple[bool, ...] = ()  # per layer: sparse MLP or dense
    windows: tuple[int | None, ...] = ()  # per layer: sliding window, None for global attention
    rope_kinds: tuple[str, ...] = ()  # per layer: which of the model's rotary tables it uses
    max_context: int = 0

    @property
    def kv_shape(self) -> dict:
        """The KV pool's shape arguments: MLA caches one latent "head" whose first channels are V."""
        if self.latent is not None:
            lat = self.latent
            return dict(
                num_layers=self.layers,
                kv_heads=1,
                head_dim=lat.kv_lora_rank + lat.rope,
                v_head_dim=lat.kv_lora_rank,
                v_in_k=True,
            )
        return dict(num_layers=self.layers, kv_heads=self.kv_heads, head_dim=self.head_dim)
