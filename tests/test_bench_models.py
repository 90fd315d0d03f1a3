"""Fast checks of bench/bench_models.py: every real shape reads as its family and sizes a pool
(DeepSeek-V3's latent against full heads: 576 against 128 x 320 channels a layer), every small
family has a real shape for the GPU run, and the decode part runs on one small family."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_models as bench  # noqa: E402


def test_pool_part_sizes_every_real_shape():
    rows = {r["model"]: r for r in bench.pool_part()}
    assert set(rows) == set(bench.REAL)
    v3 = rows["deepseek-v3"]
    assert v3["bytes_per_token"] == 61 * 576 * 2
    assert v3["mla_ratio"] == round(128 * (192 + 128) / 576, 1) == 71.1
    assert rows["qwen3-8b"]["bytes_per_token"] == 36 * 2 * 8 * 128 * 2


def test_every_small_family_has_a_real_shape():
    assert set(bench.SMALL_FAMILY) == set(bench.REAL_OF) and set(bench.REAL_OF.values()) <= set(bench.REAL)


def test_decode_part_runs(monkeypatch):
    monkeypatch.setitem(bench.SMALL, "num_hidden_layers", 1)
    (row,) = bench.decode_part(["deepseek_v3"], "cpu", layers=1, repeats=1, batch=2, new=3)
    assert row["family"] == "deepseek_v3" and row["radixrt_tok_s"] > 0 and row["transformers_tok_s"] > 0
