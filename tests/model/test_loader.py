"""Where converted GGUF models are cached."""
import shutil

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
