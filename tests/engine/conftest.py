"""Engines on a tiny random checkpoint (fast) and on the default model, shared by the engine tests."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from radixrt import Engine
from testkit.engines import TINY_VOCAB


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A 2-layer random Llama without a tokenizer (token ids only)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def default_engine() -> Engine:
    return Engine(page_size=16)
