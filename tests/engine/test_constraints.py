"""Constrained decoding: at temperature 1, over 20 seeds, on a random model (which follows no
format by itself), every output obeys its regex, JSON schema or choices, and JSON is strict JSON."""

import json
import re

import pytest

from radixrt import Engine, SamplingParams
from radixrt.engine import constraints
from radixrt.engine.constraints import strict_json_grammar

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
NOTE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 16},
        "initials": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 1},
            "minItems": 24,
            "maxItems": 24,
        },
        "body": {"type": "string", "minLength": 1, "maxLength": 24},
    },
    "required": ["title", "initials", "body"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,5}-[0-9]{1,3}"
CHOICES = ["yes", "no", "it depends"]


@pytest.fixture(scope="module")
def engine(tiny_with_tokenizer) -> Engine:
    return Engine(tiny_with_tokenizer)


def valid(person: dict) -> bool:
    return (
        set(person) == {"name", "age", "pet"}
        and isinstance(person["name"], str)
        and len(person["name"]) <= 8
        and isinstance(person["age"], int)
        and 0 <= person["age"] <= 120
        and person["pet"] in ("cat", "dog", "none")
    )


def valid_note(note: dict) -> bool:
    return (
        set(note) == {"title", "initials", "body"}
        and isinstance(note["title"], str)
        and len(note["title"]) <= 16
        and isinstance(note["initials"], list)
        and len(note["initials"]) == 24
        and all(isinstance(c, str) and len(c) == 1 for c in note["initials"])
        and isinstance(note["body"], str)
        and 1 <= len(note["body"]) <= 24
    )


def run(engine: Engine, seeds: int = 20, max_new_tokens: int = 120, **constraint) -> list:
    params = [
        SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, **constraint) for seed in range(seeds)
    ]
    ids = [engine.add_request("Answer:", p) for p in params]
    outputs = {}
    while engine.has_work():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return [(("".join(o.text for o in outputs[rid])), outputs[rid][-1]) for rid in ids]


def test_every_json_output_validates(engine):
    for text, last in run(engine, json_schema=SCHEMA):
        assert last.finish_reason == "stop", (text, last)
        assert valid(json.loads(text)), text


def test_length_bounded_strings_hold_no_raw_control_characters(engine):
    """xgrammar lowers a string with minLength/maxLength to a character class that lets U+0000..U+001F
    (all but CR and LF) through unescaped, which strict JSON forbids. One-character strings make it likely
    (the tokenizer has 24 one-character control tokens): without the fix, 6 of these 30 outputs failed."""
    for text, last in run(engine, seeds=30, json_schema=NOTE):
        assert last.finish_reason == "stop", (text, last)
        assert valid_note(json.loads(text)), text


def test_only_bounded_string_characters_change_in_the_grammar():
    """Quotes, brackets and backslashes in literals and patterns must not throw the rewrite off."""
    import xgrammar

    def own(schema: dict) -> str:
        return str(xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))

    loose, strict = r"[^\"\\\r\n]", r"[^\"\\\0-\x1f]"
    assert own(NOTE).count(loose) == 3 and strict_json_grammar(json.dumps(NOTE)) == own(NOTE).replace(loose, strict)
    tricky = {
        "anyOf": [
            {"enum": ['"[', ']"', "a\\", '[^"\\\r\n]']},
            {"type": "string", "pattern": '[^"\\\\]+'},
            {"type": "string", "maxLength": 2},
        ]
    }
    assert strict_json_grammar(json.dumps(tricky)) == own(tricky).replace(loose, strict) != own(tricky)


def test_json_mode_gives_objects(engine):
    """``response_format: json_object`` arrives as this schema string. Free strings rarely end on a random
    model, so only the outputs that stopped are whole."""
    done = [
        text
        for text, last in run(engine, max_new_tokens=16, json_schema='{"type": "object"}')
        if last.finish_reason == "stop"
    ]
    assert len(done) >= 5 and all(isinstance(json.loads(text), dict) for text in done), done


def test_every_regex_output_full_matches(engine):
    texts = [text for text, last in run(engine, regex=REGEX) if last.finish_reason == "stop"]
    assert len(texts) == 20 and all(re.fullmatch(REGEX, t) for t in texts), texts
    assert len(set(texts)) > 10  # sampled, not one answer


def test_every_choice_output_is_a_choice(engine):
    texts = [text for text, _ in run(engine, choices=CHOICES)]
    assert set(texts) <= set(CHOICES) and len(set(texts)) > 1, texts


def test_constrained_and_free_requests_share_a_batch(engine):
    free = SamplingParams(max_new_tokens=12, temperature=0)
    alone = engine.generate("Once upon a time", free)
    mixed = [
        engine.add_request("Once upon a time", free),
        engine.add_request("Digits:", SamplingParams(max_new_tokens=8, regex="[0-9]+", ignore_eos=True)),
    ]
    texts = {rid: "" for rid in mixed}
    while engine.has_work():
        for out in engine.step():
            texts[out.request_id] += out.text
    assert texts[mixed[0]] == alone.text and re.fullmatch("[0-9]+", texts[mixed[1]])


def test_a_bad_constraint_is_refused_before_anything_runs(engine):
    with pytest.raises(ValueError, match="json_schema constraint cannot be compiled"):
        engine.add_request("x", SamplingParams(json_schema='{"type": 5}'))
    with pytest.raises(ValueError, match="at most one of regex, json_schema and choices"):
        engine.add_request("x", SamplingParams(regex="a", choices=["a"]))
    with pytest.raises(ValueError, match="choices must be"):
        engine.add_request("x", SamplingParams(choices=[]))
    assert not engine.requests


def test_a_resumed_request_s_constraint_goes_on_where_it_stopped(engine):
    """A request moved from a lost worker arrives as prompt + output so far (``resumed``)."""
    params = SamplingParams(max_new_tokens=120, temperature=0, json_schema=SCHEMA)
    whole = engine.generate("Answer:", params)
    prompt = engine.tokenizer.encode("Answer:", add_special_tokens=False)
    head = whole.token_ids[:5]
    rid = engine.add_request(
        prompt + head, SamplingParams(max_new_tokens=115, temperature=0, json_schema=SCHEMA), resumed=5
    )
    tokens = []
    while engine.has_work():
        for out in engine.step():
            assert out.request_id == rid
            tokens += out.token_ids
    assert head + tokens == whole.token_ids
    with pytest.raises(ValueError, match="do not fit"):
        engine.add_request(prompt + engine.tokenizer.encode("nope"), params, resumed=1)


def test_compiled_grammars_are_kept_within_the_cache_limit(engine, monkeypatch):
    """Every distinct constraint a tenant sends is compiled and cached: the cache has a bound
    (xgrammar's accounting is loose, a little over its limit; unbounded, these take several MB)."""
    assert engine._grammars().compiler.cache_limit_bytes == constraints.GRAMMAR_CACHE_BYTES
    monkeypatch.setattr(constraints, "GRAMMAR_CACHE_BYTES", 1 << 20)
    grammars = constraints.Grammars(engine.tokenizer, engine.vocab_size)
    for n in range(2, 20):
        grammars.compile(SamplingParams(regex=f"[a-z]{{{n},{2 * n}}}-[0-9]{{1,{n}}}"))
    assert 0 < grammars.compiler.get_cache_size_bytes() < 2 << 20
