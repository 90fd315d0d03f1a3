"""Engines in tests: prompts over a tiny vocabulary, leak checks, stepping to the end."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from radixrt import Engine

TINY_VOCAB = 113


def tiny_llama(path: Path, head_dim: int = 16, context: int = 512, **config) -> str:
    """A random 2-layer Llama saved at ``path`` (4 query heads of ``head_dim``, 2 KV heads, a
    ``context``-token position limit, no tokenizer), the same weights for the same arguments."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        **{"vocab_size": TINY_VOCAB, **config},
        hidden_size=4 * head_dim,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return str(path)


def prompts(n: int, shared: int, own: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, TINY_VOCAB, (shared,), generator=g).tolist()
    return [head + torch.randint(0, TINY_VOCAB, (own,), generator=g).tolist() for _ in range(n)]


def check_pages(engine: Engine) -> None:
    """Nothing leaked: every page is free or cached, nothing is pinned, no request is left."""
    assert engine.allocator.available() + engine.cache.total_size() == engine.pool.num_pages
    assert engine.cache.protected_size() == 0
    assert not engine.requests and not engine.scheduler.running and not engine.scheduler.waiting


def run_to_end(engine: Engine, max_steps: int = 10_000) -> dict:
    """Step until nothing is left; every output by request id, in order."""
    outputs: dict = {}
    for _ in range(max_steps):
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        if not engine.has_work():
            return outputs
    raise AssertionError("the engine did not finish its requests")
