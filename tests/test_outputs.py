"""The one accumulator of outputs, and the wire structs derived from the output records."""

import dataclasses

from radixrt.outputs import FINAL, STREAMED, GenerateOutput, RequestOutput
from radixrt.wire import protocol as p


def test_every_output_field_is_streamed_or_final_and_accumulated():
    names = {f.name for f in dataclasses.fields(RequestOutput)}
    assert set(STREAMED) | set(FINAL) | {"request_id", "finished"} == names
    assert names <= {f.name for f in dataclasses.fields(GenerateOutput)}


def test_add_extends_what_streams_and_takes_the_last_output_s_ending():
    whole = GenerateOutput("r")
    whole.add(
        RequestOutput(
            "r",
            [1, 2],
            "ab",
            [-0.1, -0.2],
            [1.0, 2.0],
            top_logprobs=[[(1, -0.1)], [(2, -0.2)]],
            prompt_tokens=9,
            cached_tokens=4,
        )
    )
    assert not whole.finished and whole.prompt_tokens == 0  # the ending's fields come with the last output
    whole.add(
        RequestOutput(
            "r",
            [3],
            "c",
            [-0.3],
            [3.0],
            top_logprobs=[[(3, -0.3)]],
            finished=True,
            finish_reason="stop",
            matched_stop=3,
            prompt_tokens=9,
            cached_tokens=4,
            text_token_count=2,
            next_logprobs=[-1.0],
        )
    )
    assert (whole.text, whole.token_ids, whole.logprobs, whole.token_times) == (
        "abc",
        [1, 2, 3],
        [-0.1, -0.2, -0.3],
        [1.0, 2.0, 3.0],
    )
    assert whole.top_logprobs == [[(1, -0.1)], [(2, -0.2)], [(3, -0.3)]]
    assert (
        whole.finished,
        whole.finish_reason,
        whole.matched_stop,
        whole.prompt_tokens,
        whole.cached_tokens,
        whole.text_token_count,
        whole.next_logprobs,
    ) == (True, "stop", 3, 9, 4, 2, [-1.0])


def test_the_wire_structs_follow_the_output_records():
    """A field of the outputs reaches the wire without a copy: Finished is GenerateOutput less its
    clock, TokenOutput is RequestOutput less its text; both survive a round trip."""
    assert set(p.Finished.__struct_fields__) == {f.name for f in dataclasses.fields(GenerateOutput)} - {
        "request_id",
        "arrival",
        "finished",
    } | {"id", "worker"}
    assert set(p.TokenOutput.__struct_fields__) == {f.name for f in dataclasses.fields(RequestOutput)} - {
        "request_id",
        "text",
        "text_token_count",
    } | {"id"}
    out = GenerateOutput(
        "r",
        [1, 2],
        "hi",
        [-0.5, -0.25],
        [6.0, 7.0],
        arrival=5.0,
        finished=True,
        finish_reason="length",
        prompt_tokens=3,
        text_token_count=2,
    )
    msg = p.decoder(p.ReplyMessage).decode(p.encode(p.to_wire(p.Finished, out, worker="w0")))
    assert msg.worker == "w0" and p.from_wire(GenerateOutput, msg, arrival=5.0, finished=True) == out
