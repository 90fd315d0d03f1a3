#!/usr/bin/env python3
"""The model families: what the KV pool holds per GiB, and decode speed against transformers.

Parts (``--parts``, comma-separated):

- pool: tokens a bf16 KV pool holds per GiB for each family at its real shape (config values
  from the model cards; nothing is downloaded, nothing allocated but one page), and for the
  DeepSeek models the same model with full per-head K/V (K 192 / V 128 per head, as MLA
  decompressed): the ratio is what caching the latent buys. Gemma 3 still stores every layer's
  K/V for every token (its local layers only read less).
- decode: the engine's decode tok/s against transformers' ``generate`` on the same random-weight
  checkpoint, per family: a batch of 8 prompts of 64 tokens, 32 new tokens; the time of 32 new
  tokens less that of 1, best of ``--repeats``. On a CPU small configs (hidden 256, 4 layers),
  float32; with ``--device cuda`` the real shapes at ``--layers`` layers, bf16.

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    DeepseekV2Config,
    DeepseekV3Config,
    Gemma2Config,
    Gemma3TextConfig,
    GptOssConfig,
    MixtralConfig,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402
from radixrt.cache import KVPool  # noqa: E402
from radixrt.model.families import read_arch  # noqa: E402

REAL = {  # the published shapes
    "qwen3-8b": (Qwen3Config, dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936)),
    "gemma2-9b": (Gemma2Config, dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                     num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                                     sliding_window=4096, query_pre_attn_scalar=256)),
    "gemma3-27b": (Gemma3TextConfig, dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                                          num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                                          vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=168)),
    "mixtral-8x7b": (MixtralConfig, dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                         num_experts_per_tok=2, vocab_size=32000)),
    "qwen1.5-moe-a2.7b": (Qwen2MoeConfig, dict(hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
                                               shared_expert_intermediate_size=5632, num_hidden_layers=24,
                                               num_attention_heads=16, num_key_value_heads=16, num_experts=60,
                                               num_experts_per_tok=4, vocab_size=151936)),
    "qwen3-30b-a3b": (Qwen3MoeConfig, dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                           num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                                           head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                                           vocab_size=151936)),
    "deepseek-v2-lite": (DeepseekV2Config, dict(hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
                                                num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
                                                q_lora_rank=None, kv_lora_rank=512, qk_rope_head_dim=64,
                                                qk_nope_head_dim=128, v_head_dim=128, n_routed_experts=64,
                                                num_experts_per_tok=6, n_shared_experts=2, first_k_dense_replace=1,
                                                vocab_size=102400)),
    "gpt-oss-20b": (GptOssConfig, dict(hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
                                       num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                                       num_experts_per_tok=4, sliding_window=128, vocab_size=201088)),
    "deepseek-v3": (DeepseekV3Config, dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                                           num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
                                           q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
                                           qk_nope_head_dim=128, v_head_dim=128, n_routed_experts=256,
                                           num_experts_per_tok=8, n_group=8, topk_group=4, n_shared_experts=1,
                                           first_k_dense_replace=3, vocab_size=129280)),
}  # fmt: skip
SMALL = dict(hidden_size=256, num_hidden_layers=4, vocab_size=1024, max_position_embeddings=4096)
SMALL_FAMILY = {  # the same families, CPU-sized
    "qwen3": (Qwen3Config, dict(intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64)),
    "gemma2": (Gemma2Config, dict(intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                  sliding_window=32, query_pre_attn_scalar=64)),
    "gemma3_text": (Gemma3TextConfig, dict(intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=64, sliding_window=32, query_pre_attn_scalar=64)),
    "mixtral": (MixtralConfig, dict(intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
                                    num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": (Qwen2MoeConfig, dict(intermediate_size=768, moe_intermediate_size=128,
                                       shared_expert_intermediate_size=256, num_attention_heads=4,
                                       num_key_value_heads=4, num_experts=16, num_experts_per_tok=4)),
    "qwen3_moe": (Qwen3MoeConfig, dict(intermediate_size=768, moe_intermediate_size=128, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=4,
                                       norm_topk_prob=True)),
    "deepseek_v2": (DeepseekV2Config, dict(intermediate_size=768, moe_intermediate_size=128, num_attention_heads=4,
                                           num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=128,
                                           qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
                                           n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1,
                                           first_k_dense_replace=1)),
    "gpt_oss": (GptOssConfig, dict(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                   num_local_experts=16, num_experts_per_tok=4, sliding_window=32)),
    "deepseek_v3": (DeepseekV3Config, dict(intermediate_size=768, moe_intermediate_size=128, num_attention_heads=4,
                                           num_key_value_heads=4, q_lora_rank=96, kv_lora_rank=128,
                                           qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
                                           n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                                           n_shared_experts=1, first_k_dense_replace=1)),
}  # fmt: skip
REAL_OF = {  # each small family's real shape, for --device cuda
    "qwen3": "qwen3-8b",
    "gemma2": "gemma2-9b",
    "gemma3_text": "gemma3-27b",
    "mixtral": "mixtral-8x7b",
    "qwen2_moe": "qwen1.5-moe-a2.7b",
    "qwen3_moe": "qwen3-30b-a3b",
    "gpt_oss": "gpt-oss-20b",
    "deepseek_v2": "deepseek-v2-lite",
    "deepseek_v3": "deepseek-v3",
}
GIB = 1 << 30


def bytes_per_token(config) -> int:
    pool = KVPool(**read_arch(config, set()).kv_shape, page_size=1, num_pages=1, dtype=torch.bfloat16)
    return pool.bytes_per_token


def pool_part() -> list[dict]:
    rows = []
    for name, (cls, shape) in REAL.items():
        config = cls(**shape)
        per_token = bytes_per_token(config)
        row = dict(model=name, bytes_per_token=per_token, tokens_per_gib=GIB // per_token)
        if config.model_type.startswith("deepseek"):
            full = KVPool(
                num_layers=config.num_hidden_layers,
                kv_heads=config.num_attention_heads,
                head_dim=config.qk_nope_head_dim + config.qk_rope_head_dim,
                v_head_dim=config.v_head_dim,
                page_size=1,
                num_pages=1,
                dtype=torch.bfloat16,
            ).bytes_per_token
            row.update(full_heads_tokens_per_gib=GIB // full, mla_ratio=round(full / per_token, 1))
        rows.append(row)
    return rows


def checkpoint(family: str, device: str, layers: int, root: Path) -> Path:
    torch.manual_seed(0)
    if device == "cuda":
        cls, shape = REAL[REAL_OF[family]]
        config = cls(**{**shape, "num_hidden_layers": layers, "max_position_embeddings": 4096})
        if hasattr(config, "first_k_dense_replace"):
            config.first_k_dense_replace = min(config.first_k_dense_replace, layers - 1)
    else:
        cls, shape = SMALL_FAMILY[family]
        config = cls(**SMALL, **shape)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.no_grad():  # routers wider than the default init, so routing is not near-uniform
        for name, p in hf.named_parameters():
            if name.endswith("mlp.gate.weight") or name.endswith("block_sparse_moe.gate.weight"):
                p.normal_(0, 0.5)
    path = root / family
    hf.save_pretrained(path)
    return path


def timed(run, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def decode_part(families: list[str], device: str, layers: int, repeats: int, batch: int = 8, new: int = 32) -> list:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            path = checkpoint(family, device, layers, Path(tmp))
            prompts = torch.randint(0, 1000, (batch, 64), generator=torch.Generator().manual_seed(1))
            engine = Engine(str(path), device=device, dtype=dtype, page_size=16, kv_cache_bytes=256 << 20)

            def ours(n: int) -> None:
                params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
                engine.generate(prompts.tolist(), params)
                engine.flush_cache()  # every run computes its prompts

            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
            ids = prompts.to(device)

            def theirs(n: int) -> None:
                with torch.no_grad():
                    hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

            ours(2), theirs(2)  # warm up
            rates = {}
            for name, run in (("radixrt", ours), ("transformers", theirs)):
                elapsed = timed(lambda: run(new), repeats) - timed(lambda: run(1), repeats)
                rates[name] = batch * (new - 1) / elapsed
            rows.append(
                dict(
                    family=family,
                    radixrt_tok_s=round(rates["radixrt"], 1),
                    transformers_tok_s=round(rates["transformers"], 1),
                    ratio=round(rates["radixrt"] / rates["transformers"], 2),
                )
            )
            print(table(rows[-1:], list(rows[-1])), flush=True)
            engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="pool,decode", help="comma-separated: pool, decode")
    parser.add_argument("--families", default=",".join(SMALL_FAMILY), help="for decode")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=2, help="layers of the real shapes on a GPU")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    parts, result = args.parts.split(","), {"device": args.device}
    if "pool" in parts:
        result["pool"] = pool_part()
        print(table(result["pool"], list(result["pool"][-1])))
    if "decode" in parts:
        families = [f for f in args.families.split(",") if f]
        result["decode"] = decode_part(families, args.device, args.layers, args.repeats)
        print(table(result["decode"], list(result["decode"][0])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
