#!/usr/bin/env python3
"""Paged attention kernels benchmark.

On a GPU: decode attention at batch {1, 16, 64, 256} x context {512, 4k, 32k} x page size {1, 16},
as achieved bandwidth (K/V bytes read + q + out over the median time from CUDA events) next to a
device-to-device copy's bandwidth measured in the same run; extend attention at 8k new tokens with
and without a 4k cached prefix, as TFLOP/s next to torch's scaled_dot_product_attention on the same
data laid out contiguously. Shapes are those of a Llama-3-8B layer (32 query heads, 8 KV heads,
head dim 128) in bfloat16.

On a CPU: the CPU path next to the float64 reference and transformers' eager attention on the same
shapes (SmolLM2-135M's: 9 query heads, 3 KV heads, head dim 64, float32), as speed ratios.

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt.kernels import cpu, reference  # noqa: E402
from radixrt.kernels.layout import PagedKV  # noqa: E402


def paged_batch(
    lens: list[int], page_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: str, seed: int = 0
) -> PagedKV:
    """Random K/V for sequences of ``lens`` tokens, on pages in random physical order."""
    gen = torch.Generator(device=device).manual_seed(seed)
    counts = [-(-n // page_size) for n in lens]
    num_pages = sum(counts)
    shape = (num_pages, page_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    v = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    indices = torch.randperm(num_pages, generator=gen, device=device).to(torch.int32)
    indptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return PagedKV(k, v, indptr, indices)


def share_prefix(kv: PagedKV, tokens: int) -> PagedKV:
    """The same batch with every sequence's first ``tokens`` on the first sequence's pages, as the
    radix cache hands out a common system prompt."""
    pages = tokens // kv.page_size
    table = kv.indices.view(len(kv.indptr) - 1, -1).clone()  # equal lengths: a rectangular table
    table[:, :pages] = table[0, :pages]
    return PagedKV(kv.k, kv.v, kv.indptr, table.flatten())


def contiguous(kv: PagedKV, pool: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The sequences' K or V laid out contiguously ``[batch, kv_heads, max len, head_dim]``, for
    the baselines that take it that way (equal lengths, as in every shape here)."""
    table = cpu.page_table(PagedKV(kv.k, kv.v, kv.indptr.cpu(), kv.indices.cpu()), lens.cpu())
    rows = cpu.head_rows(table, kv.page_size, kv.kv_heads).to(pool.device)  # the index is built on the CPU
    return pool.view(-1, pool.shape[-1])[rows][:, :, : int(lens.max()) if lens.numel() else 0]


def gpu_time(fn: Callable[[], object], iters: int = 20) -> float:
    """Median seconds of ``fn`` by CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def cpu_time(fn: Callable[[], object], iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str) -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / gpu_time(lambda: dst.copy_(src))


def gpu_decode_rows(
    q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, copy_bw: float, max_gib: float
) -> list[dict]:
    from radixrt.kernels.decode import decode_attention

    rows = []
    for page_size in (1, 16):
        for batch in (1, 16, 64, 256):
            for context in (512, 4096, 32768):
                kv_bytes = 2 * batch * context * kv_heads * head_dim * dtype.itemsize
                if kv_bytes > max_gib * 2**30:
                    continue
                kv = paged_batch([context] * batch, page_size, kv_heads, head_dim, dtype, "cuda")
                q = torch.randn(batch, q_heads, head_dim, dtype=dtype, device="cuda")
                seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
                seconds = gpu_time(lambda: decode_attention(q, kv, seq_lens, max_seq_len=context))
                moved = kv_bytes + 2 * q.numel() * q.element_size()
                rows.append(
                    {
                        "page_size": page_size,
                        "batch": batch,
                        "context": context,
                        "us": round(seconds * 1e6, 1),
                        "GB_per_s": round(moved / seconds / 1e9, 1),
                        "pct_of_copy": round(100 * moved / seconds / copy_bw, 1),
                    }
                )
                kv = None  # free this shape's pool before the next one is made
    return rows


def causal_flops(new: int, prefix: int, q_heads: int, head_dim: int) -> float:
    pairs = new * prefix + new * (new + 1) / 2
    return 4 * pairs * q_heads * head_dim


def gpu_extend_rows(q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> list[dict]:
    from radixrt.kernels.extend import extend_attention

    rows, new = [], 8192
    for prefix in (0, 4096):
        kv = paged_batch([prefix + new], 16, kv_heads, head_dim, dtype, "cuda")
        q = torch.randn(new, q_heads, head_dim, dtype=dtype, device="cuda")
        k_new = torch.randn(new, kv_heads, head_dim, dtype=dtype, device="cuda")
        v_new = torch.randn(new, kv_heads, head_dim, dtype=dtype, device="cuda")
        qo_indptr = torch.tensor([0, new], dtype=torch.int32, device="cuda")
        prefix_lens = torch.tensor([prefix], dtype=torch.int32, device="cuda")
        ours = gpu_time(lambda: extend_attention(q, k_new, v_new, kv, qo_indptr, prefix_lens, max_extend_len=new))
        # The same keys and values laid out contiguously for SDPA, KV heads already repeated for
        # GQA so that SDPA may pick its flash (causal) or memory-efficient (masked) kernel.
        group = q_heads // kv_heads
        k_all = (
            torch.cat([contiguous(kv, kv.k, prefix_lens)[0], k_new.transpose(0, 1)], 1)
            .repeat_interleave(group, 0)[None]
            .contiguous()
        )
        v_all = (
            torch.cat([contiguous(kv, kv.v, prefix_lens)[0], v_new.transpose(0, 1)], 1)
            .repeat_interleave(group, 0)[None]
            .contiguous()
        )
        q4 = q.transpose(0, 1)[None].contiguous()
        if prefix:
            mask = (
                torch.arange(prefix + new, device="cuda")[None, :] <= prefix + torch.arange(new, device="cuda")[:, None]
            )
            sdpa = gpu_time(lambda: F.scaled_dot_product_attention(q4, k_all, v_all, attn_mask=mask))
        else:
            sdpa = gpu_time(lambda: F.scaled_dot_product_attention(q4, k_all, v_all, is_causal=True))
        flops = causal_flops(new, prefix, q_heads, head_dim)
        rows.append(
            {
                "new_tokens": new,
                "prefix": prefix,
                "radixrt_TFLOPs": round(flops / ours / 1e12, 1),
                "sdpa_TFLOPs": round(flops / sdpa / 1e12, 1),
                "pct_of_sdpa": round(100 * sdpa / ours, 1),
            }
        )
    return rows


def eager_attention(
    q4: torch.Tensor, k4: torch.Tensor, v4: torch.Tensor, mask: torch.Tensor | None, group: int
) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    module = SimpleNamespace(num_key_value_groups=group, training=False)
    return eager_attention_forward(module, q4, k4, v4, mask, scaling=q4.shape[-1] ** -0.5)[0]


def cpu_rows(q_heads: int, kv_heads: int, head_dim: int, iters: int) -> list[dict]:
    """Decode and extend on the CPU path next to the reference and transformers' eager attention
    (given the K/V already contiguous, as transformers keeps its cache)."""
    group, rows = q_heads // kv_heads, []
    for batch, context, shared in ((1, 512, 0), (8, 512, 0), (8, 2048, 0), (32, 2048, 0), (12, 2304, 1536)):
        kv = share_prefix(paged_batch([context] * batch, 16, kv_heads, head_dim, torch.float32, "cpu"), shared)
        q = torch.randn(batch, q_heads, head_dim)
        seq_lens = torch.full((batch,), context, dtype=torch.int32)
        k4, v4 = contiguous(kv, kv.k, seq_lens), contiguous(kv, kv.v, seq_lens)
        ours = cpu_time(lambda: cpu.decode_attention(q, kv, seq_lens, max_seq_len=context), iters)
        eager = cpu_time(lambda: eager_attention(q[:, :, None], k4, v4, None, group), iters)
        ref = cpu_time(lambda: reference.decode_attention(q, kv.k, kv.v, kv.indptr, kv.indices, seq_lens), 1)
        rows.append(
            {
                "op": "decode",
                "batch": batch,
                "context": context,
                "shared_prefix": shared,
                "cpu_path_ms": round(ours * 1e3, 3),
                "x_vs_eager": round(eager / ours, 2),
                "x_vs_reference": round(ref / ours, 1),
            }
        )
    for prefix, new in ((0, 512), (1024, 512)):
        kv = paged_batch([prefix + new], 16, kv_heads, head_dim, torch.float32, "cpu")
        q, k_new, v_new = (
            torch.randn(new, q_heads, head_dim),
            torch.randn(new, kv_heads, head_dim),
            torch.randn(new, kv_heads, head_dim),
        )
        qo_indptr, prefix_lens = torch.tensor([0, new], dtype=torch.int32), torch.tensor([prefix], dtype=torch.int32)
        k4 = torch.cat([contiguous(kv, kv.k, prefix_lens)[0], k_new.transpose(0, 1)], 1)[None]
        v4 = torch.cat([contiguous(kv, kv.v, prefix_lens)[0], v_new.transpose(0, 1)], 1)[None]
        visible = torch.arange(prefix + new)[None, :] <= prefix + torch.arange(new)[:, None]
        mask = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))[None, None]
        ours = cpu_time(lambda: cpu.extend_attention(q, k_new, v_new, kv, qo_indptr, prefix_lens), iters)
        eager = cpu_time(lambda: eager_attention(q.transpose(0, 1)[None], k4, v4, mask, group), iters)
        ref = cpu_time(
            lambda: reference.extend_attention(
                q, k_new, v_new, kv.k, kv.v, qo_indptr, kv.indptr, kv.indices, prefix_lens
            ),
            1,
        )
        rows.append(
            {
                "op": "extend",
                "batch": 1,
                "context": prefix + new,
                "shared_prefix": 0,
                "cpu_path_ms": round(ours * 1e3, 3),
                "x_vs_eager": round(eager / ours, 2),
                "x_vs_reference": round(ref / ours, 1),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu-iters", type=int, default=20, help="timed runs per CPU shape; the median counts (default 20)"
    )
    ap.add_argument(
        "--max-gib", type=float, default=24.0, help="skip GPU decode shapes whose K/V exceed this (default 24)"
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    summary: dict = {"bench": "kernels", "torch": torch.__version__}
    if torch.cuda.is_available():
        import triton

        summary.update(device=torch.cuda.get_device_name(), triton=triton.__version__)
        copy_bw = copy_bandwidth("cuda")
        decode_rows = gpu_decode_rows(32, 8, 128, torch.bfloat16, copy_bw, args.max_gib)
        extend_rows = gpu_extend_rows(32, 8, 128, torch.bfloat16)
        print(
            f"{summary['device']}: decode attention, bf16, 32 q heads / 8 KV heads x 128; "
            f"copy bandwidth {copy_bw / 1e9:.0f} GB/s\n"
        )
        print(table(decode_rows, list(decode_rows[0])))
        print("\nextend attention vs scaled_dot_product_attention on contiguous K/V\n")
        print(table(extend_rows, list(extend_rows[0])))
        goal = next(
            (r for r in decode_rows if r["batch"] == 64 and r["context"] == 4096 and r["page_size"] == 16), None
        )
        summary.update(
            copy_GB_per_s=round(copy_bw / 1e9, 1),
            decode=decode_rows,
            extend=extend_rows,
            decode_b64_4k_pct_of_copy=goal and goal["pct_of_copy"],
            extend_pct_of_sdpa=min(r["pct_of_sdpa"] for r in extend_rows),
        )
    rows = cpu_rows(9, 3, 64, args.cpu_iters)
    print(
        "\nCPU path (float32, 9 q heads / 3 KV heads x 64) vs transformers eager attention and the float64 reference\n"
    )
    print(table(rows, list(rows[0])))
    summary["cpu"] = rows
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
