#!/usr/bin/env python3
"""The engine on a GPU: greedy parity with transformers, decode speed, CUDA graphs and overlap.

Random-weight Llama checkpoints (``from_config`` + ``save_pretrained``, fixed seeds, no download)
in two shapes: the default model's (SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 KV heads of
64, vocab 49152) and Llama-3-8B's (hidden 4096, 32 heads / 8 KV heads of 128, intermediate 14336,
vocab 128256) with 4 layers. Parts (``--parts``, comma-separated):

- parity: radixrt's ``Engine`` against transformers' eager greedy ``generate``, in bf16 and
  float32, each engine built 4 ways (``cuda_graph`` x ``overlap``); the first position where
  the tokens differ (bf16 may diverge late on random weights, whose logits are nearly flat).
- decode: decode tok/s at batch 1/8/64/256 (128-token prompts, 128 new tokens: the time of
  128 new tokens less that of 1) for radixrt (graphs on and off) and transformers' ``generate``
  with a static cache; per-step ms at batch 1 of the default shape (goal: under 2 ms).
- 8b: batch-1 step time of the Llama-3-8B shape with all 32 layers against the time to read its
  weights once (weight bytes over a device-to-device copy's bandwidth; goal: within 1.5x).
- overlap: 256 requests of 32 prompt tokens and 16 new tokens, at most 64 running, with the
  overlap of scheduling and the forward pass on and off: the wall-time ratio.

Without a CUDA device (or with ``--dry-run``) the same code runs on tiny models on the CPU, in
float32, with a handful of tokens and graphs off: a check that the bench runs and that parity holds,
no GPU figure. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402

SHAPES = {  # name: LlamaConfig arguments
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),  # fmt: skip
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),  # fmt: skip
}
TINY = {  # the same code path on a CPU: two small shapes with the two head layouts
    "tiny-smollm2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=257, tie_word_embeddings=True),
    "tiny-llama3": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=32, vocab_size=263, tie_word_embeddings=False),
}  # fmt: skip
ENGINE_PARAMS = inspect.signature(Engine).parameters
ENGINE_KNOBS = [k for k in ("cuda_graph", "overlap") if k in ENGINE_PARAMS]


def build(path: Path, shape: dict, layers: int | None, dtype: torch.dtype, device: str, seed: int = 0) -> str:
    """A random-weight checkpoint of ``shape`` at ``path`` (the same weights for the same seed)."""
    if (path / "config.json").exists():
        return str(path)
    cfg = LlamaConfig(**{**shape, **({"num_hidden_layers": layers} if layers else {})}, max_position_embeddings=4096)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(path)
    del model
    free()
    return str(path)


def free() -> None:
    """Give the memory of what the caller has just let go of back to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def variants(device: str) -> list[dict]:
    """The engine keyword sets to run: graphs x overlap where the engine takes them."""
    out = [{}]
    for knob in ENGINE_KNOBS:
        values = [True, False] if knob != "cuda_graph" or device == "cuda" else [False]
        out = [{**v, knob: value} for v in out for value in values]
    return out


def label(kwargs: dict, knob: str):
    return kwargs.get(knob, "unavailable")


def engine(path: str, device: str, dtype: torch.dtype, kv_bytes: int, **kwargs) -> Engine:
    return Engine(path, device=device, dtype=dtype, detokenize=False, kv_cache_bytes=kv_bytes, **kwargs)


def radixrt_tokens(eng: Engine, prompts: list[list[int]], new: int) -> list[list[int]]:
    params = SamplingParams(max_new_tokens=new, temperature=0, ignore_eos=True)
    outs = eng.generate(prompts, params)
    failed = next((o.error for o in outs if o.error is not None), None)
    if failed is not None:
        raise RuntimeError(f"the engine failed a request: {failed}")
    return [list(o.token_ids) for o in outs]


def hf_generate(model, prompts: list[list[int]], new: int, device: str, static: bool = False) -> list[list[int]]:
    ids = torch.tensor(prompts, device=device)
    extra = {"cache_implementation": "static"} if static else {}
    model.generation_config.eos_token_id = None  # no stop and no EOS mask (min_new_tokens masks it): ignore_eos
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
            pad_token_id=0, **extra,
        )  # fmt: skip
    return out[:, ids.shape[1] :].tolist()


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g).tolist()


def parity_part(shapes, layers, args, root: Path, device: str) -> list[dict]:
    rows = []
    dtypes = [torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    for name, shape in shapes.items():
        for dtype in dtypes:
            path = build(root / f"{name}-{layers.get(name)}-{dtype}", shape, layers.get(name), dtype, device)
            prompts = [p for n in (5, 17, 40) for p in random_prompts(1, n, shape["vocab_size"], n)]
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").to(device).eval()
            want = [hf_generate(hf, [p], args.parity_tokens, device)[0] for p in prompts]
            del hf
            free()
            # bf16 the 4 ways; float32 (no rounding to blame for a difference) with the defaults
            for kwargs in variants(device) if dtype == torch.bfloat16 or device == "cpu" else [{}]:
                small_graphs = {"cuda_graph_max_bs": 8} if "cuda_graph_max_bs" in ENGINE_PARAMS else {}
                eng = engine(path, device, dtype, args.kv_bytes, **kwargs, **small_graphs)
                got = radixrt_tokens(eng, prompts, args.parity_tokens)
                eng.close()
                del eng
                free()
                div = [first_divergence(g, w) for g, w in zip(got, want)]
                rows.append({
                    "shape": name, "layers": layers.get(name) or shape["num_hidden_layers"],
                    "dtype": str(dtype).removeprefix("torch."), "cuda_graph": label(kwargs, "cuda_graph"),
                    "overlap": label(kwargs, "overlap"), "prompts": len(prompts), "new_tokens": args.parity_tokens,
                    "exact": sum(d is None for d in div),
                    "first_divergence": min((d for d in div if d is not None), default=None),
                })  # fmt: skip
    return rows


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn`` (CUDA events on a GPU) after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_seconds(run, new: int, device: str, repeats: int) -> float:
    """Seconds a decode step: the time of ``new`` new tokens less that of one, over ``new - 1``."""
    return (timed(lambda: run(new), device, repeats) - timed(lambda: run(1), device, repeats)) / (new - 1)


def decode_part(name, shape, layers, batches, args, root: Path, device: str, dtype, hf_baseline=True) -> list[dict]:
    path = build(root / f"{name}-{layers}-{dtype}", shape, layers, dtype, device)
    rows = []
    graph_batches = set(batches[:2])
    for kwargs in [k for k in variants(device) if k.get("overlap", True)]:  # overlap on (or the default)
        # no cache: each timed run computes its prompts; max_running: the whole batch decodes at once
        eng = engine(path, device, dtype, args.kv_bytes, enable_cache=False, max_running=max(batches), **kwargs)
        for batch in batches:
            if kwargs.get("cuda_graph") is False and batch not in graph_batches:
                continue
            prompts = random_prompts(batch, args.prompt_len, shape["vocab_size"], batch)
            run = lambda n, eng=eng, prompts=prompts: radixrt_tokens(eng, prompts, n)  # noqa: E731
            step = decode_seconds(run, args.new_tokens, device, args.repeats)
            graph = label(kwargs, "cuda_graph")
            rows.append({"system": "radixrt", "shape": name, "cuda_graph": graph, "batch": batch,
                         "step_ms": round(step * 1e3, 3), "tok_per_s": round(batch / step, 1)})  # fmt: skip
        eng.close()
        del eng
        free()
    if hf_baseline:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        for batch in batches:
            prompts = random_prompts(batch, args.prompt_len, shape["vocab_size"], batch)
            try:
                step = decode_seconds(
                    lambda n: hf_generate(hf, prompts, n, device, static=True), args.new_tokens, device, args.hf_repeats
                )
            except (RuntimeError, ValueError, torch.OutOfMemoryError) as e:
                print(f"transformers at batch {batch}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            rows.append({"system": "transformers_static", "shape": name, "cuda_graph": False, "batch": batch,
                         "step_ms": round(step * 1e3, 3), "tok_per_s": round(batch / step, 1)})  # fmt: skip
        del hf
        free()
    return rows


def copy_bandwidth() -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src), "cuda", 20)


def weight_read_part(args, root: Path) -> dict:
    """Batch-1 step of the full-depth Llama-3-8B shape against the time to read its weights once."""
    shape = SHAPES["llama3-8b"]
    params = shape["vocab_size"] * shape["hidden_size"]  # lm_head (embeddings: one row a step, left out)
    h, kv = shape["hidden_size"], shape["num_key_value_heads"] * shape["head_dim"]
    params += shape["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"] + 2 * h)
    need = 2 * (params + shape["vocab_size"] * h) + args.kv_bytes + (4 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        return {"skipped": f"needs {need / 2**30:.0f} GiB of free GPU memory"}
    bw = copy_bandwidth()
    rows = decode_part("llama3-8b", shape, None, [1], args, root, "cuda", torch.bfloat16, hf_baseline=False)
    read_ms = 2 * params / bw * 1e3
    best = min(r["step_ms"] for r in rows)
    return {"copy_GB_per_s": round(bw / 1e9, 1), "weight_GB": round(2 * params / 1e9, 2),
            "weight_read_ms": round(read_ms, 3), "rows": rows, "best_step_ms": best,
            "x_weight_read": round(best / read_ms, 2)}  # fmt: skip


def overlap_part(name, shape, layers, args, root: Path, device: str, dtype) -> list[dict]:
    path = build(root / f"{name}-{layers}-{dtype}", shape, layers, dtype, device)
    prompts = random_prompts(args.short_requests, args.short_prompt, shape["vocab_size"], 7)
    rows = []
    choices = [{"overlap": True}, {"overlap": False}] if "overlap" in ENGINE_KNOBS else [{}]
    for kwargs in choices:
        eng = engine(path, device, dtype, args.kv_bytes, max_running=args.short_running, enable_cache=False, **kwargs)

        def run(eng=eng):
            return radixrt_tokens(eng, prompts, args.short_new)

        seconds = timed(run, device, args.repeats)
        eng.close()
        del eng
        free()
        rows.append({"overlap": label(kwargs, "overlap"), "requests": len(prompts), "wall_s": round(seconds, 4),
                     "req_per_s": round(len(prompts) / seconds, 1)})  # fmt: skip
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (automatic without CUDA)")
    ap.add_argument("--parts", default="parity,decode,overlap,8b", help="comma-separated (default: all)")
    ap.add_argument("--parity-layers", type=int, default=4, help="layers of the Llama-3-8B shape for parity")
    ap.add_argument("--workdir", default=None, help="where the random checkpoints go (default: a temp dir)")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    gpu = device == "cuda"
    parts = {p.strip() for p in args.parts.split(",")}
    if gpu:
        shapes, layers, dtype = SHAPES, {"llama3-8b": args.parity_layers}, torch.bfloat16
        args.parity_tokens, args.prompt_len, args.new_tokens, args.repeats, args.hf_repeats = 32, 128, 128, 3, 1
        args.short_requests, args.short_prompt, args.short_new, args.short_running = 256, 32, 16, 64
        args.kv_bytes, batches = 8 << 30, [1, 8, 64, 256]
    else:
        print("no CUDA device: the GPU figures are not measured (tiny models on the CPU, float32, graphs off)")
        torch.set_num_threads(min(2, torch.get_num_threads()))
        shapes, layers, dtype = TINY, {}, torch.float32
        args.parity_tokens, args.prompt_len, args.new_tokens, args.repeats, args.hf_repeats = 6, 8, 4, 1, 1
        args.short_requests, args.short_prompt, args.short_new, args.short_running = 16, 8, 4, 8
        args.kv_bytes, batches = 8 << 20, [1, 4]
        parts.discard("8b")
    started = time.perf_counter()
    summary: dict = {"bench": "gpu", "device": torch.cuda.get_device_name() if gpu else "cpu", "gpu_measured": gpu,
                     "torch": torch.__version__, "engine_knobs": ENGINE_KNOBS or "unavailable"}  # fmt: skip
    small = next(iter(shapes))

    def parity(root: Path) -> None:
        rows = summary["parity"] = parity_part(shapes, layers, args, root, device)
        print(f"\ngreedy parity with transformers (eager), {args.parity_tokens} new tokens a prompt\n")
        print(table(rows, list(rows[0])))
        summary["parity_all_exact"] = all(r["exact"] == r["prompts"] for r in rows if r["dtype"] == "float32")

    def decode(root: Path) -> None:
        rows = summary["decode"] = decode_part(small, shapes[small], None, batches, args, root, device, dtype)
        print(f"\ndecode on the {small} shape: {args.prompt_len}-token prompts, {args.new_tokens} new tokens\n")
        print(table(rows, list(rows[0])))
        ours = [r for r in rows if r["system"] == "radixrt" and r["batch"] == 1]
        summary["default_b1_step_ms"] = min((r["step_ms"] for r in ours), default=None)
        on = [r["step_ms"] for r in ours if r["cuda_graph"] is True]
        off = [r["step_ms"] for r in ours if r["cuda_graph"] is False]
        summary["graph_speedup_b1"] = round(off[0] / on[0], 2) if on and off else None

    def overlap(root: Path) -> None:
        rows = summary["overlap"] = overlap_part(small, shapes[small], None, args, root, device, dtype)
        print(f"\nmany short requests: {args.short_prompt}-token prompts, {args.short_new} new tokens\n")
        print(table(rows, list(rows[0])))
        by = {r["overlap"]: r["wall_s"] for r in rows}
        summary["overlap_speedup"] = round(by[False] / by[True], 3) if True in by and False in by else None

    def llama3_8b(root: Path) -> None:
        result = summary["llama3_8b_b1"] = weight_read_part(args, root)
        print("\nLlama-3-8B shape, 32 layers, batch 1, against reading its weights once\n")
        print(table([{k: v for k, v in result.items() if k != "rows"}], [k for k in result if k != "rows"]))

    errors = summary["errors"] = {}
    with tempfile.TemporaryDirectory(prefix="radixrt-gpu-") as tmp:
        for name, part in {"parity": parity, "decode": decode, "overlap": overlap, "8b": llama3_8b}.items():
            if name not in parts:
                continue
            try:
                part(Path(args.workdir or tmp))
            except Exception as e:  # one part failing (out of memory, an engine error) leaves the others
                errors[name] = f"{type(e).__name__}: {e}"[:500]
                print(f"\n{name}: failed: {errors[name]}", file=sys.stderr)
            free()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(json.dumps(summary))
    if errors:
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
