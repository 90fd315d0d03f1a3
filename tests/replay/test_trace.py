"""The trace format and its importers, on small hand-made files."""

import json

import numpy as np
import pytest

from radixrt.replay.importers import from_chat_logs, from_lmcache, from_mooncake
from radixrt.replay.trace import Message, TraceError, TraceRequest, prompt_tokens, read_trace, sessions, write_trace


def test_the_format_round_trips(tmp_path):
    requests = [
        TraceRequest("s1", "a", 0.0, prompt="Hello", output="Hi"),
        TraceRequest("s1", "b", 1.5, messages=[Message("user", "Hello")], output_tokens=7, parent="a", namespace="t1"),
        TraceRequest("s2", "c", 0.25, input_ids=[1, 2, 3]),
        TraceRequest("s3", "d", 2.0, hash_ids=[0, 4], block_size=2, output_tokens=3),
    ]
    path = tmp_path / "t.jsonl"
    assert write_trace(path, requests) == 4
    assert read_trace(path).requests == requests
    assert [r.id for r in sessions(requests)["s1"]] == ["a", "b"]
    assert prompt_tokens(requests[3]).tolist() == [0, 1, 8, 9] and prompt_tokens(requests[2]).dtype == np.int32


@pytest.mark.parametrize(
    "line, message",
    [
        ({"session": "s", "id": "x", "arrival": "soon", "prompt": "p"}, r":2: arrival: Expected `float`, got `str`"),
        (
            {"session": "s", "id": "x", "prompt": "p", "input_ids": [1]},
            r":2: give exactly one of .* \(got prompt, input_ids\)",
        ),
        ({"session": "s", "id": "x", "hash_ids": [1]}, r":2: block_size goes with hash_ids"),
        ({"session": "s", "id": "x", "prompt": "p", "colour": 1}, r":2: .*colour"),
        ({"session": "s", "id": "a", "prompt": "p"}, r":2: id: 'a' is used by an earlier request"),
        ({"session": "s", "id": "x", "prompt": "p", "parent": "zz"}, r":2: parent: 'zz' names no earlier request"),
        ({"session": "s", "id": "x", "input_ids": [-1]}, r":2: input_ids\[0\]: Expected `int` >= 0"),
        ({"session": "s", "id": "x", "hash_ids": [1], "block_size": 65537}, r":2: block_size: Expected `int` <= 65536"),
    ],
)
def test_a_bad_line_is_named_and_can_be_skipped(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    good = {"session": "s", "id": "a", "prompt": "p"}
    path.write_text("\n".join(json.dumps(x) for x in (good, line, {**good, "id": "b"})) + "\n")
    with pytest.raises(TraceError, match=message):
        read_trace(path)
    result = read_trace(path, on_error="skip")
    assert [r.id for r in result.requests] == ["a", "b"] and len(result.errors) == 1


def test_mooncake_import(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"timestamp": 1500, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]}) + "\n")
    (r,) = from_mooncake(path)
    assert (r.arrival, r.hash_ids, r.block_size, r.output_tokens) == (1.5, [0, 1], 512, 5)


def test_lmcache_import_groups_sessions_in_time_order(tmp_path):
    lines = [
        {"timestamp": 3_000_000, "input": "q2", "output": "a2", "session_id": "s"},
        {"timestamp": 1_000_000, "input": "q1", "output": "a1", "session_id": "s"},
        {"timestamp": 2_000_000, "input": "other", "output": "", "session_id": "t"},
    ]
    (tmp_path / "x.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    requests = from_lmcache([tmp_path])
    assert [(r.id, r.arrival, r.prompt, r.parent) for r in requests] == [
        ("s-0", 0.0, "q1", None),
        ("t-0", 1.0, "other", None),
        ("s-1", 2.0, "q2", "s-0"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"timestamp": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an LMCache agent-trace record"):
        from_lmcache([tmp_path])


def test_chat_log_import(tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(
        json.dumps(
            [
                [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "U1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "U2"},
                    {"role": "assistant", "content": "A2"},
                ]
            ]
        )
    )
    first, second = from_chat_logs(path)
    assert [m.content for m in first.messages] == ["S", "U1"] and first.output == "A1"
    assert [m.content for m in second.messages] == ["S", "U1", "A1", "U2"] and second.parent == first.id
    path.write_text(json.dumps([[{"role": "user"}]]))
    with pytest.raises(ValueError, match="conversation 0, message 0"):
        from_chat_logs(path)


def test_a_block_size_past_the_cap_is_refused_however_the_request_was_made(tmp_path):
    """A block is expanded to its tokens in memory: 2**31 tokens a hash id would take 8 GB at once."""
    huge = TraceRequest("s", "x", hash_ids=[0], block_size=2**31)
    with pytest.raises(ValueError, match=r"block_size: must be in 1\.\.65536"):
        write_trace(tmp_path / "t.jsonl", [huge])
    with pytest.raises(ValueError, match=r"block_size must be an integer in 1\.\.65536"):
        prompt_tokens(huge)
    assert prompt_tokens(TraceRequest("s", "y", hash_ids=[1], block_size=65536)).size == 65536
