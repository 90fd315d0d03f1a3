"""Test-wide setup. Without a GPU, Triton kernels run in the interpreter on CPU tensors; that must
be chosen before any kernel module is imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402

from radixrt.model.loader import hf_directory  # noqa: E402


@pytest.fixture(scope="session")
def tiny_with_tokenizer(tmp_path_factory) -> str:
    """A 2-layer random Llama with the default model's tokenizer (49,152 tokens): text prompts and
    stop strings work, and a step takes milliseconds."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(hf_directory())
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-tok")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
