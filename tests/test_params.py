"""The caps on what one request may ask (``SamplingParams.validate``): each is named when passed,
the cap itself is accepted, and no value a hostile caller sends gets past as anything but a
``ValueError`` with a short message."""

import json

import msgspec
import pytest
import torch

from radixrt.params import (
    MAX_CHOICE_CHARS,
    MAX_CHOICES,
    MAX_CHOICES_CHARS,
    MAX_INT32,
    MAX_REGEX_CHARS,
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_PROPERTIES,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_STOP_TOKEN_IDS,
    SEED_RANGE,
    SamplingParams,
)

VOCAB = 1000


def nested(depth: int) -> str:
    """A schema whose objects nest ``depth`` deep."""
    schema: dict = {"type": "integer"}
    for _ in range(depth - 1):
        schema = {"not": schema}
    return json.dumps(schema)


def with_properties(count: int) -> str:
    """An object schema with ``count`` optional properties, over two nested objects."""
    half = {f"p{i}": {"type": "integer"} for i in range(count // 2)}
    rest = {f"q{i}": {"type": "integer"} for i in range(count - count // 2 - 1)}
    inner = {"type": "object", "properties": rest}
    return json.dumps({"type": "object", "properties": {**half, "inner": inner}})


def schema_of(chars: int) -> str:
    head = '{"description": "'
    return head + "d" * (chars - len(head) - 2) + '"}'


CAPS = [
    ("stop", ("s",) * MAX_STOP, ("s",) * (MAX_STOP + 1), "stop takes at most 16 strings"),
    ("stop", ("s" * MAX_STOP_CHARS,), ("s" * (MAX_STOP_CHARS + 1),), "stop string is at most 512 characters"),
    ("stop_token_ids", (1,) * MAX_STOP_TOKEN_IDS, (1,) * (MAX_STOP_TOKEN_IDS + 1), "stop_token_ids takes at most 256"),
    ("max_new_tokens", MAX_INT32, MAX_INT32 + 1, "max_new_tokens must be an integer in 0..2147483647"),
    ("top_k", MAX_INT32, 2**64, "top_k must be an integer in 0..2147483647"),
    ("seed", SEED_RANGE[1], SEED_RANGE[1] + 1, "seed must be a 64-bit integer"),
    ("seed", SEED_RANGE[0], SEED_RANGE[0] - 1, "seed must be a 64-bit integer"),
    ("regex", "a" * MAX_REGEX_CHARS, "a" * (MAX_REGEX_CHARS + 1), "regex must be at most 4096 characters"),
    ("json_schema", schema_of(MAX_SCHEMA_CHARS), schema_of(MAX_SCHEMA_CHARS + 1), "json_schema must be at most 65536"),
    ("json_schema", nested(MAX_SCHEMA_DEPTH), nested(MAX_SCHEMA_DEPTH + 1), "json_schema nests deeper than 32"),
    (
        "json_schema",
        with_properties(MAX_SCHEMA_PROPERTIES),
        with_properties(MAX_SCHEMA_PROPERTIES + 1),
        "json_schema has more than 1000 properties in all",
    ),
    ("choices", ("c",) * MAX_CHOICES, ("c",) * (MAX_CHOICES + 1), "choices takes at most 1024"),
    ("choices", ("c" * MAX_CHOICE_CHARS,), ("c" * (MAX_CHOICE_CHARS + 1),), "choice is at most 4096 characters"),
    (
        "choices",
        ("c" * MAX_CHOICE_CHARS,) * (MAX_CHOICES_CHARS // MAX_CHOICE_CHARS),
        ("c" * MAX_CHOICE_CHARS,) * (MAX_CHOICES_CHARS // MAX_CHOICE_CHARS + 1),
        "choices must have at most 65536 characters in all",
    ),
]


@pytest.mark.parametrize("field, at_cap, past_cap, message", CAPS)
def test_each_cap_is_named_and_the_cap_itself_passes(field, at_cap, past_cap, message):
    SamplingParams(**{field: at_cap}).validate(VOCAB)
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: past_cap}).validate(VOCAB)


def test_min_new_tokens_is_bounded_by_a_bounded_max():
    SamplingParams(max_new_tokens=MAX_INT32, min_new_tokens=MAX_INT32).validate(VOCAB)
    with pytest.raises(ValueError, match="max_new_tokens.*min_new_tokens"):
        SamplingParams(max_new_tokens=2**64, min_new_tokens=2**64).validate(VOCAB)


@pytest.mark.parametrize("seed", [SEED_RANGE[0], -1, 0, 2**63, SEED_RANGE[1]])
def test_every_seed_that_validates_seeds_torch_and_encodes(seed):
    """The seed's range is what the sampler's generator and the wire's msgpack both take."""
    SamplingParams(seed=seed).validate(VOCAB)
    torch.Generator().manual_seed(seed)
    msgspec.msgpack.encode(seed)


@pytest.mark.parametrize("seed", [SEED_RANGE[0] - 1, SEED_RANGE[1] + 1])
def test_a_seed_torch_or_msgpack_refuses_is_refused(seed):
    with pytest.raises((ValueError, OverflowError)):
        torch.Generator().manual_seed(seed)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=seed).validate(VOCAB)


def test_every_field_that_validates_encodes_as_msgpack():
    """Integers of 2**64 and more used to pass and then fail in the msgpack encoder."""
    for field in ("max_new_tokens", "min_new_tokens", "top_k", "top_logprobs", "seed"):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: 2**64}).validate(VOCAB)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=(2**64,)).validate(VOCAB)
    params = SamplingParams(temperature=2**70, repetition_penalty=2**64)
    params.validate(VOCAB)
    msgspec.msgpack.encode([params.temperature, params.repetition_penalty])


def test_integers_past_any_float_or_string_are_refused_by_name():
    with pytest.raises(ValueError) as error:
        SamplingParams(temperature=10**400, top_k=10**5000, stop_token_ids=(10**5000,)).validate(VOCAB)
    message = str(error.value)
    assert "temperature" in message and "top_k" in message and "stop_token_ids" in message
    assert "bits" in message and len(message) < 1000


@pytest.mark.parametrize(
    "schema",
    [
        "[" * 60_000,
        '{"a":' * 6_000 + "1" + "}" * 6_000,
        '{"a":' * 500 + "1" + "}" * 500,
    ],
)
def test_a_deep_schema_is_refused_before_it_reaches_xgrammar(schema):
    """Past the interpreter's recursion limit (``json.loads`` gives up) and within it (the walk)."""
    with pytest.raises(ValueError, match="json_schema nests deeper than 32 levels"):
        SamplingParams(json_schema=schema).validate(VOCAB)


def test_a_schema_that_is_no_json_is_named():
    with pytest.raises(ValueError, match="json_schema is not JSON"):
        SamplingParams(json_schema='{"type": ').validate(VOCAB)
    SamplingParams(json_schema='"just a string"').validate(VOCAB)  # xgrammar's to judge


def test_messages_stay_short_whatever_was_sent():
    with pytest.raises(ValueError) as error:
        SamplingParams(stop=("x",) * 1_000_000, choices=("",) * 100_000).validate(VOCAB)
    assert len(str(error.value)) < 1000
    with pytest.raises(ValueError) as error:
        SamplingParams.from_dict({f"unknown{i}": 1 for i in range(10_000)}).validate(VOCAB)
    assert "and 9992 more" in str(error.value) and len(str(error.value)) < 1000
