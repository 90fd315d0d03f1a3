"""Where converted GGUF models are cached."""

import shutil

import pytest

from radixrt.model.loader import content_key, converted_dir, default_gguf


def test_a_copy_of_the_model_reuses_its_conversion(tmp_path):
    """The same file in another environment (another path, another mtime) is not converted again."""
    original = default_gguf()
    copy = tmp_path / "elsewhere" / original.name
    copy.parent.mkdir()
    shutil.copy(original, copy)
    assert converted_dir(copy) == converted_dir(original)


def test_other_bytes_get_another_key(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"x" * 10_000_000)
    b.write_bytes(b"x" * 5_000_000 + b"y" + b"x" * 4_999_999)
    assert content_key(a) != content_key(b)
    assert content_key(a) == content_key(a)


def test_a_head_dim_the_kernels_cannot_run_is_refused_at_load(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from radixrt.model import load_model

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=1,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match="attention kernels cannot run this model: head_dim must be a multiple of 8 from 16 to 512, got 8",
    ):
        load_model(tmp_path)
