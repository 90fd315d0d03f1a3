"""Incremental detokenisation against decoding the whole output, on the default model's tokenizer."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from radixrt.engine.detokenizer import IncrementalDetokenizer
from radixrt.model.loader import converted_dir, default_gguf

PIECES = [
    "Hello",
    " world",
    ",",
    " ",
    "  ",
    "\n",
    "\n\n",
    "don't",
    " 42",
    "3.14",
    "déjà vu",
    "naïve",
    "Straße",
    "日本語",
    "の",
    "😀",
    "👩‍💻",
    "🇫🇷",
    "→",
    "½",
    "<|im_end|>",
    "<|im_start|>",
    "\t",
    "tokenisation",
    "ü",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(converted_dir(default_gguf()))


def stream(tokenizer, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer)
    texts = [detok.update(ids[:n]) for n in range(1, len(ids) + 1)]
    return texts + [detok.update(ids, final=True)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30))
def test_streamed_text_is_the_whole_decode(tokenizer, pieces):
    ids = tokenizer.encode("".join(pieces), add_special_tokens=False)
    texts = stream(tokenizer, ids)
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert texts[-1] == whole
    assert all(whole.startswith(t) for t in texts)  # text only grows, never rewritten
    assert "\ufffd" not in "".join(texts)


def test_a_split_character_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("a😀", add_special_tokens=False)
    assert len(ids) > 2  # the emoji's bytes span tokens
    assert stream(tokenizer, ids) == ["a"] * (len(ids) - 1) + ["a😀", "a😀"]


def test_final_flushes_an_unfinished_character(tokenizer):
    ids = tokenizer.encode("a😀", add_special_tokens=False)[:-1]
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.update(ids[:1]) == detok.update(ids) == "a"
    assert detok.update(ids, final=True) == tokenizer.decode(ids) == "a\ufffd"


def test_word_starts_keep_their_spaces():
    """A SentencePiece-style tokenizer drops the leading space of a text's first word, so each
    piece must be decoded after the token before it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "▁Hello", "▁world", "!", "▁how", "▁are", "▁you", "?"]
    spm = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    spm.pre_tokenizer, spm.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm, unk_token="<unk>")
    ids = [1, 2, 3, 4, 5, 6, 7]
    assert tokenizer.decode(ids[1:2]) == "world"
    assert stream(tokenizer, ids) == [
        "Hello",
        "Hello world",
        "Hello world!",
        "Hello world! how",
        "Hello world! how are",
        "Hello world! how are you",
        "Hello world! how are you?",
        "Hello world! how are you?",
    ]
