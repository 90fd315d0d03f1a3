"""Mooncake block-hash traces (FAST'25 release): requests as chained hashes of 512-token blocks.

The trace has no text. Each hash id stands for one block of ``block_size`` tokens; a hash id is
the same block wherever it appears, so expanding it to ``block_size`` token ids that depend only
on the hash makes every shared block a shared token prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radixrt.replay.jsonl import jsonl_records

BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 65536  # tokens per hash id: a block is expanded in memory before any check on the prompt


@dataclass(frozen=True, slots=True)
class MooncakeRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def load_mooncake(path: str | Path) -> list[MooncakeRequest]:
    return jsonl_records(
        path,
        lambda r: MooncakeRequest(
            int(r["timestamp"]), int(r["input_length"]), int(r["output_length"]), tuple(r["hash_ids"])
        ),
        "a Mooncake trace record",
    )


def block_tokens(hash_ids: tuple[int, ...] | list[int], block_size: int = BLOCK_SIZE) -> np.ndarray:
    """int32 token ids for a request's blocks: block ``h`` is ``h * block_size + [0, block_size)``,
    so no two blocks share a token and every block's tokens are the same in every request."""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, (int, np.integer))
        or not 1 <= block_size <= MAX_BLOCK_SIZE
    ):
        raise ValueError(f"block_size must be an integer in 1..{MAX_BLOCK_SIZE}, got {block_size!r}")
    ids = np.asarray(hash_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or (ids.max() + 1) * block_size > np.iinfo(np.int32).max):
        raise ValueError(
            f"hash ids must lie in [0, {np.iinfo(np.int32).max // block_size}) to expand to int32 token ids"
        )
    return (ids[:, None] * block_size + np.arange(block_size)).reshape(-1).astype(np.int32)
