#!/usr/bin/env bash
# One prepared run on a GPU machine: the kernel tests compiled and run for real against the
# float64 reference, the engine through the kernels against the CPU path, and the GPU benchmarks
# (kernels; host tier copies against the copy engine's peak; the KV formats' decode and extend
# kernels against bf16's tokens/s and the copy bandwidth; the agent workload on a model shaped
# like the default one with random weights).
#
#   bench/device_check.sh [OUT_DIR] [MODEL_LIKE_DIR]
#
# MODEL_LIKE_DIR holds the default model's config.json and tokenizer files (a few MB; the GGUF
# itself is 98 MB): bench/random_model.py builds a random-weight model of that shape from it.
# Without it the engine benchmark is skipped. Each step has its own time limit, so one that hangs
# cannot take the others' time; the log of each lands in OUT_DIR, the JSON lines in summary.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/device}
like=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF' 2>&1 | tee "$out/env.txt"
import torch, triton, transformers
print("device", torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__,
      "| transformers", transformers.__version__)
EOF

step() {  # step NAME SECONDS COMMAND...: run it, keep its log, note how it ended
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/steps.txt"
    tail -n 1 "$out/$name.log" | grep '^{' >>"$out/summary.jsonl" || true
}

step kernel_tests 240 python3 -m pytest -q -p no:cacheprovider tests/kernels
step bench_kernels 180 python3 bench/bench_kernels.py --cpu-iters 3
step bench_tier_copy 60 python3 bench/bench_tier_copy.py
step bench_kv_dtype 180 python3 bench/bench_kv_dtype.py --skip-quality
if [ -n "$like" ]; then
    step random_model 60 python3 bench/random_model.py /tmp/radixrt-random --like "$like"
    step bench_engine 180 python3 bench/bench_engine.py --model /tmp/radixrt-random
fi
grep -h -E "passed|failed|error" "$out/kernel_tests.log" | tail -n 3
cat "$out/steps.txt"
