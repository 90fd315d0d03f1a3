"""The engine on the default model: parity with transformers, and the stop rule on real text."""

import torch
from transformers import AutoModelForCausalLM

from radixrt import Engine, SamplingParams
from radixrt.model.loader import converted_dir, default_gguf
from testkit.engines import check_pages


def test_default_model_greedy_equals_transformers(default_engine):
    hf = AutoModelForCausalLM.from_pretrained(converted_dir(default_gguf()), dtype=torch.float32).eval()
    questions = ["What is the capital of France?", "Name three colours.", "What is 12 times 12?"]
    prompts_ = [default_engine.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    outs = default_engine.generate(prompts_, SamplingParams(max_new_tokens=32, temperature=0))
    for p, out in zip(prompts_, outs):
        with torch.no_grad():
            expected = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)[0, len(p) :].tolist()
        assert out.token_ids == expected


def count_prompt(engine: Engine) -> list[int]:
    return engine.apply_chat_template([{"role": "user", "content": "Count from 1 to 10, separated by commas."}])


def test_stop_strings_cut_the_text(default_engine):
    prompt = count_prompt(default_engine)
    out = default_engine.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0, stop="5"))
    assert out.finish_reason == "stop" and out.matched_stop == "5" and "5" not in out.text and "4" in out.text
    out = default_engine.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0, stop=("5", "3")))
    assert out.finish_reason == "stop" and out.matched_stop == "3" and "2" in out.text  # the earliest stop string wins


def test_one_stop_rule_for_stream_text_and_tokens(default_engine):
    """Stop ", 4": the stream never shows part of it, the streamed pieces are the text, and the
    tokens behind the text decode to it."""
    prompt = count_prompt(default_engine)
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=", 4")
    pieces = list(default_engine.stream(prompt, params))
    out = default_engine.generate(prompt, params)
    assert out.text.endswith("3") and "".join(pieces) == out.text and out.matched_stop == ", 4"
    assert all(not p.endswith(",") and not p.endswith(", ") for p in pieces)
    decode = default_engine.tokenizer.decode
    assert decode(out.text_token_ids) == out.text
    assert ", 4" in decode(out.token_ids)  # the tokens generated, up to the one that completed the stop string


def test_streamed_pieces_add_up_to_the_text(default_engine):
    prompt = default_engine.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about the sea, with emoji."}]
    )
    params = SamplingParams(max_new_tokens=48, temperature=0)
    pieces = list(default_engine.stream(prompt, params))
    out = default_engine.generate(prompt, params)
    assert len(pieces) > 5 and "".join(pieces) == out.text == default_engine.tokenizer.decode(
        out.token_ids, skip_special_tokens=True
    )


def test_a_stream_closed_early_aborts_its_request(default_engine):
    pieces = default_engine.stream(count_prompt(default_engine), SamplingParams(max_new_tokens=40, temperature=0))
    assert next(pieces)
    assert default_engine.requests
    pieces.close()
    check_pages(default_engine)
