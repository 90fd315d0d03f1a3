"""The ``radixrt`` command: output, the stop option, and exit codes."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from radixrt.cli import main
from radixrt.model.loader import converted_dir, default_gguf


def test_generate_prints_the_continuation(capsys):
    assert (
        main(["generate", "Count from 1 to 10, separated by commas.", "--chat", "--max-tokens", "40", "--stop", ", 4"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.strip().endswith("3") and ", 4" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "0"], "top_p must be in"),
        (["--model", "no/such/model"], "not found"),
        (["--max-tokens", "-3"], "max_new_tokens"),
    ],
)
def test_bad_input_exits_2_with_the_reason(capsys, args, message):
    assert main(["generate", "Hello", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host-cache-gb", "1e7", "--workers", "2"], "2 host KV tiers would take 20000000.0 GiB"),
        (["--disk-cache", "somewhere"], "--disk-cache DIR and --disk-cache-gb N go together"),
        (["--host-cache-gb", "-1"], "sizes >= 0"),
    ],
)
def test_serve_refuses_tiers_it_cannot_have_before_starting_anything(capsys, args, message):
    assert main(["serve", "--port", "0", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_request_exits_1(tmp_path, capsys):
    """A checkpoint whose output layer is NaN: the request fails, and the command says so."""
    tokenizer = AutoTokenizer.from_pretrained(converted_dir(default_gguf()))
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["generate", "Hello", "--model", str(tmp_path), "--max-tokens", "4"]) == 1
    assert "the request failed: the logits are not finite" in capsys.readouterr().err


def test_keys_says_which_file_goes_to_whom(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "keys")]) == 0
    said = capsys.readouterr().err
    for role in ("client", "admin", "worker"):
        assert f"{role}.key_secret" in said and (tmp_path / "keys" / f"{role}.key_secret").exists()
        assert (tmp_path / "keys" / f"{role}s").is_dir()
    assert "Never hand out server.key_secret" in said
