#!/usr/bin/env python3
"""KV compression benchmark: what each KV cache dtype (``Engine(kv_dtype=...)``) buys in tokens per
byte and costs in quality and kernel time, side by side in one run on the default model
(SmolLM2-135M-Instruct, float32 on the CPU).

1. **Capacity.** Bytes per token of the KV pool (every layer's K and V, with the scales of the
   quantised formats) and tokens per GiB, against bf16.
2. **Quality against an fp32 KV cache.** ``--prompts`` windows of ``--tokens`` tokens of real
   text, and one engine per dtype. Source: the tails of the longest prompts of the LMCache agent
   traces (``../shared/traces/lmcache-agent``, mini-SWE-agent and tau-bench sessions: shell
   output, code and dialogue, not the text the tests use), one window per session in turn, walking
   back from each prompt's end; without ``../shared`` the repository's ``docs/*.md`` cut into
   windows (the run says which). Every engine runs with ``chunk_size=1``: each prompt advances one
   token a step, all prompts in one batch, so every position goes through the decode path
   (``write_kv``, then ``decode_attention`` over the pool) and reads every earlier token, and
   itself, from the quantised pool, exactly as a generated token does. (A prefill chunk would
   let its own tokens see each other's fresh full-precision K/V and hide part of the error.)
   - perplexity: teacher-forced, from the engine's ``prompt_logprobs`` over every window token
     after the first, pooled over all windows; its relative difference to fp32 KV;
   - KL(fp32 KV || dtype) of the next-token distributions, over the **full vocabulary** (exact,
     not truncated to a top-k): the engines step in lockstep on the same batch and the bench
     records the logits of each engine's forward (a wrapper around ``engine.runner``), pairing rows
     by (request, position); the mean over the same positions as the perplexity, with the
     fraction of positions whose argmax agrees with fp32's;
   - greedy agreement: ``--generate`` tokens greedily after each window (the window's K/V is
     served from the radix cache, as written token by token above): the fraction of windows whose
     output equals fp32's exactly, and the mean common prefix in tokens.
   Goals (``ppl_pass``, ``greedy_pass``): int8 perplexity within 0.5% of fp32 KV and >= 95% of
   greedy outputs equal; int4 perplexity within 3%. fp8 is reported beside them without a goal.
3. **Kernel time.** ``decode_attention`` (``--kernel-batch`` sequences of ``--kernel-context``
   tokens, one query each) and ``extend_attention`` (64 new tokens a sequence after the same
   prefix) on pools of each format filled by ``write_kv`` with random K/V, pages shuffled, the
   default model's shape (9 query heads, 3 KV heads, head_dim 64, 16-token pages): median of
   ``--repeats`` calls after a warm-up, against the fp32 and bf16 pools. On the CPU that is the
   PyTorch path in float32 (``--threads`` threads); with CUDA, also the Triton kernels in
   bfloat16, at the same shape and at 64 x 4096 tokens.
   ``kv_GB_per_s`` is the pool bytes the call reads (K, V and scales) over its time, ``copy_frac``
   that rate over the rate of a ``torch`` copy of as many bytes on the same device (the copy
   reads and writes them).
4. **Hit rate at a fixed byte budget.** Each agent trace of ``--traces`` (default: the tau-bench
   and the mini-SWE-agent sessions) through ``radixrt.replay.cache_sim.simulate`` (the engine's
   admission rules, one request at a time, arrival order, outputs not cached) with a device pool
   of ``budget // (bytes_per_token * 16)`` pages for each dtype; the budget is ``--budget-mib``,
   or by default, per trace, the bytes at which bf16 holds ``--fraction`` (4%) of the trace's
   working set (its distinct 16-token pages). 4% because these traces reuse recent turns: at 1/8
   of tau-bench's working set bf16 already hits 0.851 of the 0.852 that any pool reaches, and
   every dtype ties. A trace that is absent is skipped with a note.

Prints a table per part, then one JSON line with every figure. Takes about 6 minutes on two CPU
cores shared with other jobs, with the defaults and one torch thread (``--threads``); the quality
part dominates (prompts x (tokens + generate + 16) forwards of one token a prompt, for each
dtype). ``--quick`` is a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import table  # noqa: E402
from workloads import working_set_pages  # noqa: E402

from radixrt import Engine, SamplingParams  # noqa: E402
from radixrt.cache import KVPool  # noqa: E402
from radixrt.engine.model_runner import kv_pool_dtype  # noqa: E402
from radixrt.kernels.attention import PagedKV, decode_attention, extend_attention, write_kv  # noqa: E402

PAGE = 16
REFERENCE = "fp32"
BASELINE = "bf16"  # capacity and hit-rate ratios are against it
ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
AGENT_TRACES = TRACES / "lmcache-agent"
DEFAULT_TRACES = f"{AGENT_TRACES / 'taubench'},{AGENT_TRACES / 'miniswe'}"
PPL_GOAL = {"int8": 0.005, "int4": 0.03}  # relative perplexity difference to fp32 KV, at most
GREEDY_GOAL = {"int8": 0.95}  # fraction of greedy outputs equal to fp32 KV's, at least
EXTEND_NEW = 64  # new tokens a sequence in the extend timing
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # the default model's attention shape


def progress(iterable=None, **kwargs):
    return tqdm(iterable, file=sys.stderr, leave=False, **kwargs)


def model_config():
    """The default model's config, without loading its weights."""
    from transformers import AutoConfig

    from radixrt.model.loader import hf_directory

    return AutoConfig.from_pretrained(hf_directory())


def pool_bytes_per_token(dtypes: list[str]) -> dict[str, int]:
    """Each dtype's KV bytes per token for the default model (a one-page ``KVPool`` of each)."""
    cfg = model_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    out = {}
    for d in dtypes:
        pool = KVPool(
            num_layers=cfg.num_hidden_layers,
            kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            page_size=PAGE,
            dtype=kv_pool_dtype(d, torch.float32),
            num_pages=1,
        )
        out[d] = pool.bytes_per_token
    return out


# ---- 1. capacity --------------------------------------------------------------------------------


def capacity_part(dtypes: list[str], per_token: dict[str, int]) -> list[dict]:
    base = per_token[BASELINE]
    return [
        {
            "kv_dtype": d,
            "bytes_per_token": per_token[d],
            "tokens_per_GiB": 2**30 // per_token[d],
            "vs_bf16": round(base / per_token[d], 3),
        }
        for d in dtypes
    ]


# ---- 2. quality ---------------------------------------------------------------------------------


def agent_windows(tokenizer, count: int, length: int) -> list[list[int]]:
    """``count`` windows of ``length`` tokens: per session of the agent traces, its longest
    prompt's last ``length`` tokens, then the ``length`` before them, and so on, taking one window
    from each session in turn (sessions share their system prompts, their tails differ)."""
    texts = []
    for path in sorted(AGENT_TRACES.glob("*/*.jsonl")):
        prompts = [json.loads(line)["input"] for line in path.open() if line.strip()]
        if prompts:
            texts.append(max(prompts, key=len))
    per_session = -(-count // max(1, len(texts))) + 1
    columns = []
    for text in progress(texts, desc="tokenizing trace prompts"):
        tail = text[-length * 8 * per_session :]  # ample: a token is rarely over 8 characters
        ids = tokenizer.encode(tail, add_special_tokens=False)[1:]  # the first may be a cut token
        columns.append([ids[len(ids) - (j + 1) * length : len(ids) - j * length] for j in range(len(ids) // length)])
    windows = []
    for j in range(max((len(c) for c in columns), default=0)):
        windows += [c[j] for c in columns if j < len(c)]
    return windows[:count]


def docs_windows(tokenizer, count: int, length: int) -> list[list[int]]:
    """Consecutive windows of the repository's ``docs/*.md``, concatenated in name order."""
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [ids[i * length : (i + 1) * length] for i in range(min(count, len(ids) // length))]


class Recorder:
    """Wraps an engine's runner: each forward's logits, keyed by (request id, position), for
    batches where every request advances one token (one logits row each, in batch order)."""

    def __init__(self, engine: Engine) -> None:
        runner = engine.runner
        model, launch = runner.model, runner.launch
        self.keys: list[tuple[str, int]] = []
        self.logits: torch.Tensor | None = None

        def forward(batch, pool):
            self.logits = model(batch, pool)
            return self.logits

        def keyed_launch(batch, *args, **kwargs):
            self.keys = [(req.id, req.computed) if n == 1 else None for req, n in batch]
            self.logits = None
            return launch(batch, *args, **kwargs)

        runner.model, runner.launch = forward, keyed_launch

    def take(self) -> dict[tuple[str, int], torch.Tensor]:
        logits, keys = self.logits, self.keys
        self.logits, self.keys = None, []
        if logits is None or None in keys or logits.shape[0] < len(keys):  # rows past them: sink refreshes
            return {}
        return {key: logits[i] for i, key in enumerate(keys)}


def lockstep(engines: dict[str, Engine], on_step=None, desc: str = "", total: int | None = None) -> dict:
    """Step every engine once a round until none has work; ``on_step(round's logits by dtype)``.
    Returns each engine's finished outputs by request id, and every token each generated."""
    finished = {d: {} for d in engines}
    tokens = {d: {} for d in engines}
    recorders = {d: e._bench_recorder for d, e in engines.items()}
    with progress(desc=desc, total=total, unit="step") as bar:
        while any(e.has_work() for e in engines.values()):
            for d, e in engines.items():
                if e.has_work():
                    for out in e.step():
                        tokens[d].setdefault(out.request_id, []).extend(out.token_ids)
                        if out.finished:
                            finished[d][out.request_id] = out
            rows = {d: r.take() for d, r in recorders.items()}
            if on_step is not None:
                on_step(rows)
            bar.update()
    for d, outs in finished.items():
        failed = [o for o in outs.values() if o.finish_reason == "error"]
        if failed:
            raise RuntimeError(f"kv_dtype {d}: {len(failed)} requests failed, first: {failed[0].error}")
    return finished, tokens


def quality_part(dtypes: list[str], windows: list[list[int]], args) -> tuple[list[dict], dict]:
    length, generate = len(windows[0]), args.generate
    need_tokens = 2 * len(windows) * (length + generate + 2 * PAGE)
    engines = {}
    for d in progress([REFERENCE] + [d for d in dtypes if d != REFERENCE], desc="loading engines"):
        per_token = pool_bytes_per_token([d])[d]
        e = Engine(
            kv_dtype=d,
            page_size=PAGE,
            chunk_size=1,  # every position reads the pool, as decoding does
            max_batch_tokens=max(2048, 2 * len(windows)),
            max_running=len(windows),
            kv_cache_bytes=need_tokens * per_token,
            detokenize=False,
        )
        if engines:  # one copy of the weights: the model is stateless, the pool is each engine's
            first = next(iter(engines.values()))
            e.model = e.runner.model = first.model
        e._bench_recorder = Recorder(e)
        engines[d] = e
    stats = {d: e.stats() for d, e in engines.items()}

    # teacher-forced: perplexity from prompt_logprobs, KL from the recorded logits
    kl = {d: [0.0, 0, 0] for d in engines}  # sum KL, positions, argmax agreements

    def score(rows: dict[str, dict]) -> None:
        ref = rows[REFERENCE]
        keys = [k for k in ref if k[1] < length - 1]  # positions that predict a window token
        if not keys:
            return
        p_log = torch.log_softmax(torch.stack([ref[k] for k in keys]).double(), -1)
        p_top = p_log.argmax(-1)
        for d, got in rows.items():
            if d == REFERENCE:
                continue
            shared = [i for i, k in enumerate(keys) if k in got]
            if len(shared) != len(keys):
                raise RuntimeError(f"kv_dtype {d}: the engines did not step in lockstep")
            q_log = torch.log_softmax(torch.stack([got[k] for k in keys]).double(), -1)
            kl[d][0] += float((p_log.exp() * (p_log - q_log)).sum())
            kl[d][1] += len(keys)
            kl[d][2] += int((q_log.argmax(-1) == p_top).sum())

    score_params = SamplingParams(max_new_tokens=1, temperature=0)
    for e in engines.values():
        for i, w in enumerate(windows):
            e.add_request(w, score_params, request_id=f"score{i}", prompt_logprobs_from=1)
    scored, _ = lockstep(engines, score, "teacher-forced, one token a step", total=length)

    greedy_params = SamplingParams(max_new_tokens=generate, temperature=0)
    for e in engines.values():
        for i, w in enumerate(windows):
            e.add_request(w, greedy_params, request_id=f"greedy{i}")
    _, greedy = lockstep(engines, None, "greedy", total=generate + PAGE)

    rows = []
    ref_nll = None
    ref_tokens = [greedy[REFERENCE][f"greedy{i}"] for i in range(len(windows))]
    for d in engines:
        lps = np.concatenate([scored[d][f"score{i}"].prompt_logprobs for i in range(len(windows))])
        nll = -float(lps.mean())
        if d == REFERENCE:
            ref_nll = nll
        ppl = math.exp(nll)
        outs = [greedy[d][f"greedy{i}"] for i in range(len(windows))]
        prefix = [common_prefix(a, b) for a, b in zip(outs, ref_tokens)]
        equal = sum(a == b for a, b in zip(outs, ref_tokens)) / len(windows)
        ppl_rel = ppl / math.exp(ref_nll) - 1
        total, n, agree = kl[d]
        rows.append(
            {
                "kv_dtype": d,
                "kv_bytes_per_token": stats[d]["kv_bytes_per_token"],
                "perplexity": round(ppl, 4),
                "ppl_rel_diff": round(ppl_rel, 5),
                "kl_mean": round(total / n, 6) if n else 0.0,
                "argmax_agree": round(agree / n, 4) if n else 1.0,
                "greedy_equal": round(equal, 4),
                "common_prefix": round(float(np.mean(prefix)), 2),
                "goal": goal_text(d),
                "ppl_pass": abs(ppl_rel) <= PPL_GOAL[d] if d in PPL_GOAL else None,
                "greedy_pass": equal >= GREEDY_GOAL[d] if d in GREEDY_GOAL else None,
            }
        )
    info = {"scored_positions_per_dtype": len(windows) * (length - 1), "generated_per_window": generate}
    return rows, info


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def goal_text(d: str) -> str:
    parts = []
    if d in PPL_GOAL:
        parts.append(f"ppl <= {PPL_GOAL[d]:.1%}")
    if d in GREEDY_GOAL:
        parts.append(f"equal >= {GREEDY_GOAL[d]:.0%}")
    return ", ".join(parts) or ("reference" if d == REFERENCE else "-")


# ---- 3. kernel time -----------------------------------------------------------------------------


def kernel_case(d: str, batch: int, context: int, device: str, compute: torch.dtype) -> dict:
    """A one-layer pool of ``d`` holding ``batch`` sequences of ``context`` tokens plus room for
    ``EXTEND_NEW`` more, on shuffled pages, filled by ``write_kv``."""
    gen = torch.Generator().manual_seed(0)
    per_seq = -(-(context + EXTEND_NEW) // PAGE)
    num_pages = batch * per_seq + 1
    pool = KVPool(
        num_layers=1,
        kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        page_size=PAGE,
        dtype=kv_pool_dtype(d, compute),
        device=device,
        num_pages=num_pages,
    )
    pages = torch.randperm(num_pages, generator=gen)[: batch * per_seq].view(batch, per_seq).int()
    slots = (pages[:, :, None].long() * PAGE + torch.arange(PAGE)).flatten(1)[:, :context]
    k = torch.randn(batch * context, KV_HEADS, HEAD_DIM, generator=gen).to(device, compute)
    v = torch.randn(batch * context, KV_HEADS, HEAD_DIM, generator=gen).to(device, compute)
    scales = pool.scales(0)
    write_kv(pool.k[0], pool.v[0], slots.flatten().to(device), k, v, *scales)
    ctx_pages = -(-context // PAGE)
    decode_kv = PagedKV(
        pool.k[0],
        pool.v[0],
        torch.arange(batch + 1, dtype=torch.int32, device=device) * ctx_pages,
        pages[:, :ctx_pages].flatten().contiguous().to(device),
        *scales,
    )
    extend_kv = PagedKV(
        pool.k[0],
        pool.v[0],
        torch.arange(batch + 1, dtype=torch.int32, device=device) * per_seq,
        pages.flatten().contiguous().to(device),
        *scales,
    )
    return {"pool": pool, "decode_kv": decode_kv, "extend_kv": extend_kv, "gen": gen}


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_part(dtypes: list[str], batch: int, context: int, repeats: int, device: str) -> list[dict]:
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    copy_time: dict[int, float] = {}
    rows = []
    for d in progress(dtypes, desc=f"kernels on {device}, {batch} x {context} tokens"):
        case = kernel_case(d, batch, context, device, compute)
        gen, per_token = case["gen"], case["pool"].bytes_per_token  # one layer's K and V (and scales)
        q = torch.randn(batch, HEADS, HEAD_DIM, generator=gen).to(device, compute)
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        qx = torch.randn(batch * EXTEND_NEW, HEADS, HEAD_DIM, generator=gen).to(device, compute)
        kx = torch.randn(batch * EXTEND_NEW, KV_HEADS, HEAD_DIM, generator=gen).to(device, compute)
        vx = torch.randn(batch * EXTEND_NEW, KV_HEADS, HEAD_DIM, generator=gen).to(device, compute)
        qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * EXTEND_NEW
        prefix_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        ops = {
            "decode": (
                lambda: decode_attention(q, case["decode_kv"], seq_lens, max_seq_len=context),
                batch,
            ),
            "extend": (
                lambda: extend_attention(
                    qx, kx, vx, case["extend_kv"], qo_indptr, prefix_lens, max_extend_len=EXTEND_NEW
                ),
                batch * EXTEND_NEW,
            ),
        }
        read = batch * context * per_token
        if read not in copy_time:
            src = torch.empty(read, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            copy_time[read] = timed(lambda: dst.copy_(src), repeats, device)
        for op, (fn, new_tokens) in ops.items():
            t = timed(fn, repeats, device)
            rows.append(
                {
                    "op": op,
                    "kv_dtype": d,
                    "device": device,
                    "batch": batch,
                    "context": context,
                    "ms": round(1000 * t, 3),
                    "tok_per_s": round(new_tokens / t),
                    "kv_GB_per_s": round(read / t / 1e9, 2),
                    "copy_frac": round(copy_time[read] / t, 3),
                }
            )
    for row in rows:
        for base in (REFERENCE, BASELINE):
            ref = next((r for r in rows if r["op"] == row["op"] and r["kv_dtype"] == base), None)
            row[f"vs_{base}"] = round(row["ms"] / ref["ms"], 3) if ref else None
    return rows


# ---- 4. hit rate at a byte budget ---------------------------------------------------------------


def hit_rate_part(dtypes: list[str], per_token: dict[str, int], args, tokenizer, trace: str) -> tuple[list[dict], dict]:
    from radixrt.replay.cache_sim import simulate
    from radixrt.replay.importers import load
    from radixrt.replay.trace import prompt_tokens

    requests = sorted(load(trace, "auto", "stop").requests, key=lambda r: r.arrival)
    if args.trace_limit:
        requests = requests[: args.trace_limit]
    prompts = [prompt_tokens(r, tokenizer) for r in progress(requests, desc="tokenizing the trace")]
    working = working_set_pages(prompts)
    if args.budget_mib is not None:
        budget = int(args.budget_mib * 2**20)
    else:
        budget = int(args.fraction * working) * per_token[BASELINE] * PAGE
    rows = []
    for d in progress(dtypes, desc="simulating"):
        pages = budget // (per_token[d] * PAGE)
        sim = simulate(prompts, PAGE, pages, engine_rules=True)
        rows.append(
            {
                "kv_dtype": d,
                "pool_pages": pages,
                "of_working_set": round(pages / working, 4),
                "hit_rate": round(sim.hit_rate, 4),
            }
        )
    base = next((r for r in rows if r["kv_dtype"] == BASELINE), None)
    for r in rows:
        r["vs_bf16"] = round(r["hit_rate"] / base["hit_rate"], 3) if base and base["hit_rate"] else None
    info = {
        "trace": str(Path(trace).relative_to(TRACES)) if Path(trace).is_relative_to(TRACES) else trace,
        "requests": len(prompts),
        "prompt_tokens": int(sum(len(p) for p in prompts)),
        "working_set_pages": working,
        "budget_MiB": round(budget / 2**20, 2),
    }
    return rows, info


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16,fp8,int8,int4",
        help="KV dtypes, comma-separated (default fp32,bf16,fp8,int8,int4); fp32 is always run as the "
        "quality reference and bf16 always sized as the capacity and hit-rate baseline",
    )
    parser.add_argument("--prompts", type=int, default=24, help="text windows scored (default 24)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens a window (default 256)")
    parser.add_argument("--generate", type=int, default=32, help="greedy tokens after each window (default 32)")
    parser.add_argument("--kernel-batch", type=int, default=8, help="sequences in the kernel timing (default 8)")
    parser.add_argument("--kernel-context", type=int, default=1024, help="their cached tokens (default 1024)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls a kernel, median taken (default 7)")
    parser.add_argument(
        "--traces",
        default=DEFAULT_TRACES,
        help="traces for the hit rate, comma-separated (default: the tau-bench and mini-SWE agent traces)",
    )
    parser.add_argument("--trace-limit", type=int, default=0, help="only the trace's first N requests (0: all)")
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.04,
        help="default byte budget: what holds this fraction of a trace's working set in bf16 (default 0.04)",
    )
    parser.add_argument("--budget-mib", type=float, default=None, help="the byte budget in MiB instead")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a 2-core machine shared with other jobs, two threads made "
        "the engine steps up to 10x slower; 0: torch's own choice)",
    )
    parser.add_argument("--skip-quality", action="store_true", help="leave out part 2 (the slow one)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 4 windows of 64 tokens, 8 generated, kernels at 2 x 256, the traces' first 60 requests",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.tokens, args.generate = 4, 64, 8
        args.kernel_batch, args.kernel_context, args.repeats = 2, 256, 3
        args.trace_limit = args.trace_limit or 60
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dtypes = args.dtypes
    every = list(dict.fromkeys([*dtypes, REFERENCE, BASELINE]))
    per_token = pool_bytes_per_token(every)
    result: dict = {"bench": "kv_dtype", "dtypes": dtypes, "args": {k: v for k, v in vars(args).items()}}

    capacity = capacity_part(dtypes, per_token)
    print("\n1. capacity: KV bytes per token of the default model (30 layers x 3 KV heads x 64)\n")
    print(table(capacity, list(capacity[0])))
    result["capacity"] = capacity

    from transformers import AutoTokenizer

    from radixrt.model.loader import hf_directory

    tokenizer = AutoTokenizer.from_pretrained(hf_directory())

    if not args.skip_quality:
        if AGENT_TRACES.exists():
            windows = agent_windows(tokenizer, args.prompts, args.tokens)
            source = "the LMCache agent traces' prompt tails (../shared/traces/lmcache-agent)"
        else:
            windows, source = [], ""
        if len(windows) < args.prompts:
            print(f"note: {len(windows)} trace windows; using docs/*.md instead", file=sys.stderr)
            windows = docs_windows(tokenizer, args.prompts, args.tokens)
            source = "the repository's docs/*.md"
        quality, info = quality_part(dtypes, windows, args)
        print(
            f"\n2. quality against an fp32 KV cache: {len(windows)} windows of {args.tokens} tokens from {source}, "
            f"chunk_size=1 (every position reads the pool); KL over the full vocabulary; "
            f"{args.generate} greedy tokens a window\n"
        )
        print(table(quality, list(quality[0])))
        result["quality"] = {"rows": quality, "source": source, "windows": len(windows), "tokens": args.tokens, **info}

    kernels = kernel_part(dtypes, args.kernel_batch, args.kernel_context, args.repeats, "cpu")
    if torch.cuda.is_available():
        gpu_repeats = max(20, args.repeats)
        kernels += kernel_part(dtypes, args.kernel_batch, args.kernel_context, gpu_repeats, "cuda")
        kernels += kernel_part(dtypes, 64, 4096, gpu_repeats, "cuda")
    print(
        f"\n3. kernel time: 9 query heads, 3 KV heads, head_dim 64, {PAGE}-token pages; decode = one token a "
        f"sequence, extend = {EXTEND_NEW} new tokens a sequence; median of {args.repeats} calls "
        f"(vs_*: time over that pool's)\n"
    )
    columns = ["op", "kv_dtype", "device", "batch", "context", "ms", "vs_fp32", "vs_bf16", "tok_per_s"]
    print(table(kernels, columns + ["kv_GB_per_s", "copy_frac"]))
    result["kernels"] = kernels

    result["hit_rate"] = []
    for trace in [t.strip() for t in args.traces.split(",") if t.strip()]:
        if not Path(trace).exists():
            print(f"\n4. simulated hit rate: skipped, no trace at {trace} (give --traces)")
            continue
        hits, info = hit_rate_part(dtypes, per_token, args, tokenizer, trace)
        print(
            f"\n4. simulated hit rate at {info['budget_MiB']:,} MiB of KV: {info['trace']}, "
            f"{info['requests']} requests, working set {info['working_set_pages']:,} pages of {PAGE} tokens\n"
        )
        print(table(hits, list(hits[0])))
        result["hit_rate"].append({"rows": hits, **info})
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
