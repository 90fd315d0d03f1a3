"""A tokenizer across the wire: the router sends the files ``save_pretrained`` writes, a client that
tokenizes on its side loads them (``GetTokenizer`` / ``TokenizerFiles``)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from radixrt import cache_root


def tokenizer_files(tokenizer: Any) -> dict[str, bytes]:
    """``tokenizer`` as ``save_pretrained`` writes it: file name -> contents."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}


def load_tokenizer(files: dict[str, bytes]) -> Any:
    """The tokenizer that ``tokenizer_files()`` gave, written once to the local cache (keyed by its
    contents) and loaded with transformers (imported here, not by the client itself)."""
    from transformers import AutoTokenizer

    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    directory = cache_root() / "tokenizers" / digest.hexdigest()[:16]
    if not directory.exists():
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (tmp / Path(name).name).write_bytes(content)
        try:
            tmp.rename(directory)
        except OSError:  # another process wrote it first
            pass
    return AutoTokenizer.from_pretrained(directory)
