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
