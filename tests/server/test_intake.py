"""The router's intake on its own: what it refuses before it spends time on a request (text too
long for the context whatever its tokens, a constraint slower to compile than allowed), with the
default model's real tokenizer."""

from __future__ import annotations

import time

import pytest
from transformers import AutoTokenizer

from radixrt.model.loader import hf_directory
from radixrt.params import SamplingParams
from radixrt.server import intake as intake_module
from radixrt.server.intake import Intake, Refused, longest_token_chars
from radixrt.wire import protocol as p

WORKERS = [p.Register(p.PROTOCOL_VERSION, "w0", 1, "m", 49152, 2048, 16, 4096)]


@pytest.fixture(scope="module")
def intake():
    made = Intake(AutoTokenizer.from_pretrained(hf_directory()))
    yield made
    made.close()


def test_text_that_cannot_fit_is_refused_without_tokenizing_it(intake):
    longest = longest_token_chars(intake.tokenizer)
    fits = "a" * (longest * 2047)  # might fit, as far as its length tells: tokenized, then refused by count
    with pytest.raises(Refused, match="the prompt has .* tokens"):
        intake.prepare(p.Generate("a", prompt=fits), WORKERS)
    start = time.monotonic()
    with pytest.raises(Refused, match="cannot fit the context"):
        intake.prepare(p.Generate("b", prompt="a" * (longest * 2048 + 1)), WORKERS)
    chat = [p.ChatMessage("user", "a" * (longest * 2048 + 1))]
    with pytest.raises(Refused, match="cannot fit the context"):
        intake.prepare(p.Generate("c", messages=chat), WORKERS)
    assert time.monotonic() - start < 1.0  # 350 KB of text each: tokenizing them would take longer


def test_a_constraint_slower_to_compile_than_allowed_is_refused(intake, monkeypatch):
    schema = '{"type": "object", "properties": {"slow": {"type": "string"}}}'
    wire = p.wire_sampling(SamplingParams(json_schema=schema))
    monkeypatch.setattr(intake_module, "COMPILE_TIMEOUT", 0.0)
    with pytest.raises(Refused, match="takes longer than 0 s to compile"):
        intake.prepare(p.Generate("a", prompt="hi", params=wire), WORKERS)
    monkeypatch.setattr(intake_module, "COMPILE_TIMEOUT", 30.0)
    assert intake.prepare(p.Generate("b", prompt="hi", params=wire), WORKERS).params.json_schema == schema


def test_windows_the_workers_cannot_hold_are_refused_and_long_windowed_text_is_taken(intake):
    small = p.wire_sampling(SamplingParams(kv_window=8))
    with pytest.raises(Refused, match=r"kv_window must be at least a page \(16 tokens\), got 8"):
        intake.prepare(p.Generate("a", prompt="hi", params=small), WORKERS)
    huge = p.wire_sampling(SamplingParams(kv_window=1 << 20, sink_tokens=4))
    with pytest.raises(Refused, match="needs up to .* tokens of KV cache, and it holds 65536"):
        intake.prepare(p.Generate("b", prompt="hi", params=huge), WORKERS)
    windowed = p.wire_sampling(SamplingParams(kv_window=512, sink_tokens=4))
    past_context = "word " * 3000  # more tokens than the 2048-token context: a window takes them
    assert len(intake.prepare(p.Generate("c", prompt=past_context, params=windowed), WORKERS).prompt) > 2048
