"""The stop rule: streamed pieces, the final text and the token ids agree, on the default model's tokenizer."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.engine.output_text import OutputText
from radixrt.model.loader import converted_dir, default_gguf

PIECES = ["1", ",", " 2", ", ", "3", " 4", "\n", ".\n", "END", "EN", "D", " world", "日本", "😀", "é", "ab", "b", "a"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(converted_dir(default_gguf()))


def run(tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[list[str], OutputText, int]:
    """Feed ``ids`` one token at a time as the engine does; returns the pieces handed out, the
    text state and how many tokens were fed before a stop string ended it."""
    text = OutputText(IncrementalDetokenizer(tokenizer), stops)
    pieces = []
    for n in range(1, len(ids) + 1):
        final = n == len(ids)
        if text.update(ids[:n], final=final) is not None:
            pieces.append(text.take(final=True))
            return pieces, text, n
        pieces.append(text.take(final=final))
    return pieces, text, len(ids)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=20),
    st.lists(st.sampled_from(PIECES + [", 4", "3,", "D\n"]), max_size=3),
)
def test_pieces_text_and_tokens_agree(tokenizer, pieces, stops):
    ids = tokenizer.encode("".join(pieces), add_special_tokens=False)
    stops = tuple(s for s in stops if s.strip() or s == "\n")
    streamed, text, fed = run(tokenizer, ids, stops)
    assert "".join(streamed) == text.text
    whole = tokenizer.decode(ids[:fed], skip_special_tokens=True)
    cut = min([whole.find(s) for s in stops if s in whole], default=len(whole))
    assert text.text == whole[:cut]  # the text before the earliest stop string
    so_far = ""
    for piece in streamed[:-1]:
        so_far += piece
        assert not any(s in so_far for s in stops)  # nothing streamed turned out to be a stop string
    kept = text.tokens_behind(ids[:fed])
    behind = tokenizer.decode(ids[:kept], skip_special_tokens=True)
    assert text.text.startswith(behind)
    if kept < fed:  # the next token already reaches into the stop string (or past the text)
        assert not text.text.startswith(tokenizer.decode(ids[: kept + 1], skip_special_tokens=True))


def test_counting_with_a_stop_that_starts_on_a_token(tokenizer):
    ids = tokenizer.encode("1, 2, 3, 4, 5", add_special_tokens=False)
    streamed, text, fed = run(tokenizer, ids, (", 4",))
    assert text.text == "1, 2, 3" and "".join(streamed) == "1, 2, 3" and text.matched == ", 4"
    assert tokenizer.decode(ids[: text.tokens_behind(ids[:fed])]) == "1, 2, 3"


def test_text_that_could_still_be_a_stop_is_held_back(tokenizer):
    text = OutputText(IncrementalDetokenizer(tokenizer), ("END",))
    ids = tokenizer.encode("go EN", add_special_tokens=False)
    text.update(ids)
    assert text.take() == "go " and text.take(final=True) == "EN"
