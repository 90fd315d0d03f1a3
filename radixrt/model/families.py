"""The model families radixrt runs, read from a Hugging Face config into an :class:`Arch`, and the
checkpoint's tensors into the modules' names. A config asking for something the modules do not
compute is refused by name here, rather than run to a silently wrong answer."""

from __future__ import annotations

import re

import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import yarn_apply_mscale
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from radixrt.model.layers import ACTIVATIONS, Rotary
from radixrt.model.spec import Arch, Latent, MoE, Routing

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
MLA = ("deepseek_v2", "deepseek_v3")
GEMMA = ("gemma2", "gemma3_text")
GPT_OSS = ("gpt_oss",)
SUPPORTED = (*LLAMA_LIKE, *MOE, *MLA, *GEMMA, *GPT_OSS)


class UnsupportedConfig(ValueError):
    pass


def refuse(config: PretrainedConfig, field: str, why: str) -> None:
    raise UnsupportedConfig(f"{config.model_type}: {field}={getattr(config, field, None)!r} is not supported: {why}")


def check_common(config: PretrainedConfig) -> None:
    method = (getattr(config, "quantization_config", None) or {}).get("quant_method")
    if method is not None and method != "gguf":  # a GGUF file's weights are de-quantised when converted
        refuse(config, "quantization_config", f"quantized checkpoints ({method}) are not read; use a bf16/fp16 one")
    act = getattr(config, "hidden_activation", None) or config.hidden_act
    if act not in ACTIVATIONS:
        raise UnsupportedConfig(
            f"{config.model_type}: hidden activation {act!r} is not supported (supported: {', '.join(ACTIVATIONS)}; "
            "the MLPs are gated, SwiGLU or GeGLU)"
        )
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        refuse(config, "rope_parameters", f"RoPE type {rope_type!r} rescales with the sequence length; not computed")


def layer_windows(config: PretrainedConfig) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: global attention), a mask in the kernels: every layer
    for Mistral and Mixtral, the ``layer_types`` marked "sliding_attention" for Gemma 3 and for
    Qwen with ``use_sliding_window``."""
    window = getattr(config, "sliding_window", None)
    if config.model_type.startswith("qwen") and not getattr(config, "use_sliding_window", False):
        window = None
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
    return tuple(window if window and kind == "sliding_attention" else None for kind in types)


def read_arch(config: PretrainedConfig, names: set[str]) -> Arch:
    """``names``: the checkpoint's tensor names (after :func:`prepare_state`): biases are the
    checkpoint's to have or not."""
    kind = config.model_type
    if kind not in SUPPORTED:
        also = " (a multimodal Gemma 3: load its text model, gemma3_text)" if kind == "gemma3" else ""
        raise UnsupportedConfig(
            f"model type {kind!r} is not supported{also} (supported: {', '.join(sorted(SUPPORTED))})"
        )
    check_common(config)
    layers = config.num_hidden_layers
    layer0 = {name.removeprefix("model.layers.0.") for name in names if name.startswith("model.layers.0.")}
    common = dict(
        model_type=kind,
        layers=layers,
        hidden=config.hidden_size,
        vocab=config.vocab_size,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        intermediate=config.intermediate_size,
        eps=config.rms_norm_eps,
        act=getattr(config, "hidden_activation", None) or config.hidden_act,
        qkv_bias="self_attn.q_proj.bias" in layer0,
        o_bias="self_attn.o_proj.bias" in layer0,
        mlp_bias="mlp.gate_proj.bias" in layer0,
        qk_norm="self_attn.q_norm.weight" in layer0,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        moe_layers=(False,) * layers,
        windows=layer_windows(config),
        rope_kinds=("default",) * layers,
        max_context=config.max_position_embeddings,
    )
    if kind in MOE:
        routing = Routing(
            experts=config.num_experts if kind == "qwen2_moe" else config.num_local_experts,
            top_k=config.num_experts_per_tok,
            normalize=kind == "mixtral" or bool(config.norm_topk_prob),
        )
        sparse = (True,) * layers  # Qwen-MoE may keep some layers dense
        if kind != "mixtral":
            step, dense = config.decoder_sparse_step, set(config.mlp_only_layers)
            sparse = tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))
        inter = config.intermediate_size if kind == "mixtral" else config.moe_intermediate_size
        shared = config.shared_expert_intermediate_size if kind == "qwen2_moe" else 0
        moe = MoE(routing, inter, shared_intermediate=shared, shared_gate=bool(shared))
        return Arch(**{**common, "moe": moe, "moe_layers": sparse})
    if kind in MLA:
        return Arch(**{**common, **deepseek(config)})
    if kind in GEMMA:
        return Arch(**{**common, **gemma(config)})
    if kind in GPT_OSS:
        routing = Routing(config.num_local_experts, config.num_experts_per_tok, "topk_softmax", router_bias=True)
        limits = dict(swiglu_limit=float(config.swiglu_limit), swiglu_alpha=float(config.swiglu_alpha))
        moe = MoE(routing, config.intermediate_size, expert_bias=True, **limits)
        return Arch(**{**common, "moe": moe, "moe_layers": (True,) * layers, "sinks": True})
    return Arch(**common)


def gemma(config: PretrainedConfig) -> dict:
    """Gemma 2 and 3: (1 + w) norms around attention and the MLP, scaled embeddings, a query scale
    of its own, soft-capped logits (and attention scores, Gemma 2); Gemma 3's local layers rotate
    with a base of their own."""
    if getattr(config, "use_bidirectional_attention", False):
        refuse(config, "use_bidirectional_attention", "attention here is causal")
    v3 = config.model_type == "gemma3_text"
    return dict(
        norm_offset=1.0,
        sandwich_norms=True,
        embed_scale=config.hidden_size**0.5,
        attn_scale=config.query_pre_attn_scalar**-0.5,
        final_softcap=getattr(config, "final_logit_softcapping", None),
        attn_softcap=getattr(config, "attn_logit_softcapping", None),
        rope_kinds=tuple(config.layer_types) if v3 else ("default",) * config.num_hidden_layers,
    )


def deepseek(config: PretrainedConfig) -> dict:
    v3 = config.model_type == "deepseek_v3"
    method = getattr(config, "topk_method", "noaux_tc" if v3 else "greedy")
    if method not in (("noaux_tc",) if v3 else ("greedy", "group_limited_greedy")):
        refuse(
            config, "topk_method", "the routers here are DeepSeek-V2's greedy/group_limited_greedy and V3's noaux_tc"
        )
    scoring = getattr(config, "scoring_func", "sigmoid" if v3 else "softmax")
    if scoring != ("sigmoid" if v3 else "softmax"):
        refuse(config, "scoring_func", f"{config.model_type} routes with {'sigmoid' if v3 else 'softmax'} scores")
    if getattr(config, "moe_layer_freq", 1) != 1:
        refuse(config, "moe_layer_freq", "every layer past first_k_dense_replace is sparse here")
    grouped = v3 or method == "group_limited_greedy"
    routing = Routing(
        experts=config.n_routed_experts,
        top_k=config.num_experts_per_tok,
        scoring=scoring,
        normalize=bool(config.norm_topk_prob),
        scale=float(config.routed_scaling_factor),
        groups=config.n_group if grouped else 1,
        topk_groups=config.topk_group if grouped else 1,
        group_score="top2" if v3 else "max",
        score_bias=v3,
    )
    shared = config.moe_intermediate_size * (config.n_shared_experts or 0)
    latent = Latent(
        q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank,
        nope=config.qk_nope_head_dim,
        rope=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim,
        bias=bool(getattr(config, "attention_bias", False)),
    )
    qk_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    return dict(
        latent=latent,
        moe=MoE(routing, config.moe_intermediate_size, shared),
        moe_layers=tuple(i >= config.first_k_dense_replace for i in range(config.num_hidden_layers)),
        attn_scale=yarn_apply_mscale(config.rope_parameters, qk_dim**-0.5),
    )


def read_ropes(config: PretrainedConfig, arch: Arch) -> dict[str, Rotary]:
    """The rotary tables the layers use, by ``arch.rope_kinds``; transformers computes the
    frequencies, so every RoPE scaling variant it knows reads the same here."""
    if arch.model_type == "gemma3_text":  # local and global layers rotate with different bases
        rope = Gemma3RotaryEmbedding(config)
        return {
            kind: Rotary(getattr(rope, f"{kind}_inv_freq"), getattr(rope, f"{kind}_attention_scaling"))
            for kind in set(arch.rope_kinds)
        }
    rope = LlamaRotaryEmbedding(config)  # head_dim is the rotated width: DeepSeek's config sets qk_rope_head_dim
    interleaved = arch.model_type == "deepseek_v2" or (
        arch.model_type == "deepseek_v3" and getattr(config, "rope_interleave", True)
    )
    return {"default": Rotary(rope.inv_freq, rope.attention_scaling, interleaved)}


def gpt_oss_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """gpt-oss's MoE tensors as the other families': ``router`` is ``gate``; ``gate_up_proj [E,
    hidden, 2 * inter]`` with gate and up in alternate columns becomes ``gate_up [E, 2 * inter,
    hidden]``, gates first (its bias alike), and ``down_proj [E, inter, hidden]`` becomes ``down``."""

    def split(t: torch.Tensor) -> torch.Tensor:  # [..., 2 * inter] interleaved -> gates, then ups
        return torch.cat([t[..., 0::2], t[..., 1::2]], dim=-1)

    out = {}
    for name, tensor in state.items():
        name = name.replace(".mlp.router.", ".mlp.gate.")
        if name.endswith("mlp.experts.gate_up_proj"):
            out[name.removesuffix("_proj")] = split(tensor).transpose(1, 2).contiguous()
        elif name.endswith("mlp.experts.gate_up_proj_bias"):
            out[name.replace("gate_up_proj_bias", "gate_up_bias")] = split(tensor)
        elif name.endswith("mlp.experts.down_proj"):
            out[name.removesuffix("_proj")] = tensor.transpose(1, 2).contiguous()
        elif name.endswith("mlp.experts.down_proj_bias"):
            out[name.replace("down_proj_bias", "down_bias")] = tensor
        else:
            out[name] = tensor
    return out


EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
MIXTRAL_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def prepare_state(config: PretrainedConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the modules' names: Mixtral's ``block_sparse_moe.experts.i.w1``
    become ``mlp.experts.i.gate_proj``, each layer's experts are stacked into ``mlp.experts.gate_up
    [E, 2 * inter, hidden]`` and ``mlp.experts.down [E, hidden, inter]`` (from per-expert tensors, or
    transformers' fused ones, which are these), and tensors no module uses (DeepSeek-V3's multi-token-prediction
    layers past ``num_hidden_layers``, cached RoPE tables) are dropped. gpt-oss's experts, stored
    ``[E, in, out]`` with gate and up interleaved, are brought to the same layout (:func:`gpt_oss_state`)."""
    if config.model_type in GPT_OSS:
        state = gpt_oss_state(state)
    layers = config.num_hidden_layers
    out, experts = {}, {}
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        at = re.match(r"^model\.layers\.(\d+)\.", name)
        if at and int(at.group(1)) >= layers:
            continue
        name = re.sub(
            r"\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.",
            lambda m: f".mlp.experts.{m.group(1)}.{MIXTRAL_NAMES[m.group(2)]}.",
            name,
        ).replace(".block_sparse_moe.", ".mlp.")
        name = name.replace(".mlp.shared_expert.", ".mlp.shared_experts.")  # Qwen2-MoE's one shared expert
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):  # fused already
            out[name.removesuffix("_proj")] = tensor
        elif m := EXPERT.match(name):
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = tensor
        else:
            out[name] = tensor
    for prefix, by_index in experts.items():
        ordered = [by_index[e] for e in sorted(by_index)]
        out[f"{prefix}.gate_up"] = torch.stack([torch.cat([w["gate_proj"], w["up_proj"]]) for w in ordered])
        out[f"{prefix}.down"] = torch.stack([w["down_proj"] for w in ordered])
    return out
