import json

import numpy as np
import pytest

from radixrt.replay.mooncake import block_tokens, load_mooncake


def test_load(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(
        json.dumps({"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]})
        + "\n\n"
        + json.dumps({"timestamp": 3, "input_length": 600, "output_length": 9, "hash_ids": [0, 2]})
        + "\n"
    )
    reqs = load_mooncake(path)
    assert [r.hash_ids for r in reqs] == [(0, 1), (0, 2)] and reqs[1].timestamp_ms == 3


def test_malformed_record_names_the_line(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text(json.dumps({"timestamp": 0, "hash_ids": [0]}) + "\n")
    with pytest.raises(ValueError, match=r"trace.jsonl:1: not a Mooncake trace record"):
        load_mooncake(path)


def test_blocks_expand_to_stable_disjoint_tokens():
    a, b = block_tokens([0, 1], block_size=4), block_tokens([0, 2], block_size=4)
    assert a.dtype == np.int32 and a.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert (a[:4] == b[:4]).all() and not set(a[4:].tolist()) & set(b[4:].tolist())


def test_hash_ids_too_large_for_int32_are_refused():
    with pytest.raises(ValueError, match="hash ids must lie in"):
        block_tokens([2**23], block_size=512)


@pytest.mark.parametrize("block_size", [0, 65537, 2**40, 1.5, True])
def test_a_block_size_outside_1_to_65536_is_refused(block_size):
    with pytest.raises(ValueError, match=r"block_size must be an integer in 1\.\.65536"):
        block_tokens([], block_size=block_size)
